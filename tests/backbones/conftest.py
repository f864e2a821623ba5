import importlib.util
import json

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes tens of seconds on a CPU (e.g. regenerating CLIP's weights)"
    )
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")


@pytest.fixture(scope="session")
def featup_fixture(fixtures_dir):
    """The public FeatUp backbone fixture: cases.json, its weights.py, and a lazy
    regenerator of the original-format weight files (each written once per session)."""
    root = fixtures_dir / "featup-backbones"
    if not (root / "cases.json").is_file():
        pytest.skip(f"no FeatUp backbone fixtures at {root}")
    spec = importlib.util.spec_from_file_location("featup_fixture_weights", root / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    return root, json.loads((root / "cases.json").read_text()), weights


@pytest.fixture(scope="session")
def featup_weights(featup_fixture, tmp_path_factory):
    """name -> path of the regenerated original-format weights file of that backbone."""
    _, cases, weights = featup_fixture
    out = tmp_path_factory.mktemp("featup-weights")
    made = {}

    def get(name):
        entry = cases["backbones"][name]["weights"]
        if entry["file"] not in made:  # clip and maskclip share ViT-B-16.pt
            made[entry["file"]] = weights.regenerate(entry, out)
        return made[entry["file"]]

    return get
