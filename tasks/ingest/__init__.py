"""Getting data in: the sources collect reads (built-in datasets, folders, S3) and the life of a raw
batch between collect and the validation gate."""
