import pytest


@pytest.fixture(scope="session")
def organism_world(tmp_path_factory):
    """The shipped organisms' world (seed 0), regenerated as `hiertrain organism world` does."""
    from hiertrain.organisms.build import write_world

    out = tmp_path_factory.mktemp("organism_world")
    write_world(out, 0, progress=False)
    return out
