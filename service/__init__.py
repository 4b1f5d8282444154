"""The genloop service (BentoML): the API in front of a model, its request bodies, guard, records and page."""

from models import check_own_code

check_own_code(__file__)
