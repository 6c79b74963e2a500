"""``import georaster_quant`` stays light: no torch, onnxruntime or dask until needed."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def test_package_import_is_light():
    mods = _modules_after("import georaster_quant")
    assert not {"torch", "onnxruntime", "dask", "rasterio"} & mods


def test_cli_help_does_not_import_torch():
    mods = _modules_after(
        "from georaster_quant.cli.main import cli\n"
        "try:\n"
        "    cli.main(['train', '--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert "torch" not in mods and "onnxruntime" not in mods


def test_lazy_exports_resolve():
    import georaster_quant as gq

    for name in gq.__all__:
        assert getattr(gq, name) is not None
