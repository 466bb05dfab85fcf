"""Runs PyPI's wfastcgi.py on Linux, unchanged, the way IIS runs it (for scripts/bench/run).

IIS starts `python wfastcgi.py` with the FastCGI connection on its stdin; pyfcgi bench
--spawn-pool does the same. wfastcgi then reads its app from the Web.config in the directory
named by APPL_PHYSICAL_PATH (WSGI_HANDLER, PYTHONPATH, WSGI_RESTART_FILE_REGEX), as on IIS.

wfastcgi.py binds Windows APIs when it is imported (ctypes.windll.kernel32 for its file
watcher and shutdown event), which do not exist on Linux. This stub lets the import succeed;
none of them is called as long as the Web.config sets WSGI_RESTART_FILE_REGEX to "" (no file
watcher) and _FCGI_SHUTDOWN_EVENT_ is unset. The request path is wfastcgi's own code.
"""

import ctypes
import types


class _WindowsOnly:
    """A kernel32 function: its argtypes/restype can be set; calling it fails loudly."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *args):
        raise OSError(f"wfastcgi called the Windows API {self.name}, which Linux does not have")


class _Kernel32:
    def __getattr__(self, name):
        return _WindowsOnly(name)


ctypes.windll = types.SimpleNamespace(kernel32=_Kernel32())

import wfastcgi  # noqa: E402  (after the stub, on purpose)

if __name__ == "__main__":
    wfastcgi.main()
