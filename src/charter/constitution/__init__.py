from charter.constitution.loader import default_constitution_path, load_constitution, parse_constitution
from charter.constitution.model import Category, Constitution, Domain, ExchangeSeed, Kind, Seed, Seeds, Severity

__all__ = [
    "Category",
    "Constitution",
    "Domain",
    "ExchangeSeed",
    "Kind",
    "Seed",
    "Seeds",
    "Severity",
    "default_constitution_path",
    "load_constitution",
    "parse_constitution",
]
