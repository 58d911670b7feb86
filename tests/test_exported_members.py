import types

import holysheep


def test_all_lists_every_public_name_sorted() -> None:
    public = {
        name
        for name, value in vars(holysheep).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and name != "TYPE_CHECKING"
    }
    assert public | set(holysheep._LAZY) == set(holysheep.__all__) - {"__version__"}
    assert holysheep.__all__ == sorted(holysheep.__all__)


def test_every_exported_name_resolves_including_the_lazy_ones() -> None:
    for name in holysheep.__all__:
        assert getattr(holysheep, name) is not None
    assert set(holysheep._LAZY) <= set(dir(holysheep))
