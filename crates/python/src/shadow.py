"""pyfcgi: files in the application's folder named like a standard library module."""
import importlib.machinery
import os
import sys
import sysconfig


def _stdlib_paths():
    paths = []
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_path(key)
        if p:
            paths += [p, os.path.join(p, "lib-dynload")]
    paths.append(os.path.join(sys.base_prefix, "DLLs"))
    # The Windows embeddable distribution keeps the standard library in pythonXY.zip.
    paths += [p for p in sys.path if p.lower().endswith(".zip")]
    seen = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen


def _stdlib_origin(name, paths):
    if name in sys.builtin_module_names:
        return "built into the interpreter"
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, paths)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "frozen"):
        return spec.origin
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return None


def shadows(folder):
    """(module, your file, the standard library's file, the file sys.modules holds or None)."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    # sys.stdlib_module_names leaves out the `test` package, yet test.py shadows it too.
    names = set(sys.stdlib_module_names) | {"test"}
    paths = None
    found = []
    for entry in entries:
        path = os.path.join(folder, entry)
        stem, ext = os.path.splitext(entry)
        if ext == ".py" and os.path.isfile(path):
            module = stem
        elif not ext and os.path.isfile(os.path.join(path, "__init__.py")):
            module = entry
        else:
            continue
        if module not in names or module == "__main__":
            continue
        if paths is None:
            paths = _stdlib_paths()
        origin = _stdlib_origin(module, paths)
        if origin is None:
            continue  # not a standard module on this platform (msvcrt.py on Linux)
        loaded = sys.modules.get(module)
        loaded_file = getattr(loaded, "__file__", None) if loaded is not None else None
        if loaded is not None and loaded_file is None:
            loaded_file = "built into the interpreter"
        found.append((module, os.path.abspath(path), origin, loaded_file))
    return found
