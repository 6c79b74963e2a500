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


def test_exports_stay_the_named_objects_after_their_modules_load():
    """No export is shadowed by a submodule of the same name, however often it is used."""
    import inspect

    import georaster_quant as gq
    import georaster_quant.cli.demo  # noqa: F401  (imports the training and evaluation code)

    for _ in range(2):
        for name in gq.__all__:
            value = getattr(gq, name)
            assert not inspect.ismodule(value), f"gq.{name} is a module"
            if name != "__version__":
                assert value.__name__ == name
