"""Running a Bento on this machine: the managed `bentoml serve` process behind deploy and rollback."""
