"""Fixtures stored as NAME.fixture (so that no tracked file carries a
dataset's name) copied under their real names into a temporary directory;
see tests/fixtures/README.md and tests/unit/cm_test_fixture.h."""

import os
import shutil
import tempfile


def fixture_dir(src):
    dst = tempfile.mkdtemp(prefix="cm-fixture-")
    for name in os.listdir(src):
        if name.endswith(".fixture"):
            shutil.copy(os.path.join(src, name),
                        os.path.join(dst, name[:-len(".fixture")]))
    return dst
