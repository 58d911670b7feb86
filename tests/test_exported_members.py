import types

import holysheep


def test_all_lists_every_public_name_sorted() -> None:
    public = {
        name
        for name, value in vars(holysheep).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(holysheep.__all__) - {"__version__"}
    assert holysheep.__all__ == sorted(holysheep.__all__)
