import holysheep


def test_all_lists_every_public_name_sorted() -> None:
    public = {name for name in dir(holysheep) if not name.startswith("_")} - {"errors"}
    exported = set(holysheep.__all__) - {"__version__"}
    assert public - {m for m in public if isinstance(getattr(holysheep, m), type(holysheep))} == exported
    assert holysheep.__all__ == sorted(holysheep.__all__, key=str.lower) or holysheep.__all__ == sorted(
        holysheep.__all__
    )
