#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into fuzz/seeds/<target>/seed_*.

fuzz/seeds/ is checked in; scripts/fuzz copies it into the working corpus (fuzz/corpus/, not
checked in) before each run. Targets with structured (`arbitrary`) input, such as records,
have no hand-made seeds: their fuzz/seeds/ folder holds a corpus minimised from a campaign
(`scripts/fuzz --save-seeds`).

server_conn inputs carry a control prefix (see fuzz_targets/server_conn.rs): byte 0 holds the
number of control bytes and flags, then the control bytes, then the FastCGI stream.
"""
import os
import struct
import sys

BEGIN, ABORT, END, PARAMS, STDIN, STDOUT, STDERR, DATA, GET_VALUES, GET_VALUES_RESULT, UNKNOWN = range(1, 12)
RESPONDER, AUTHORIZER = 1, 2


def record(kind, rid, content=b"", pad=0):
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), pad, 0) + content + b"\0" * pad


def nv_len(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def pairs(items):
    out = b""
    for name, value in items:
        out += nv_len(len(name)) + nv_len(len(value)) + name + value
    return out


def begin(rid, role=RESPONDER, keep=True):
    return record(BEGIN, rid, struct.pack(">HB5x", role, 1 if keep else 0))


def request(rid, env, body=b"", keep=True, split_params=False):
    p = pairs(env)
    out = begin(rid, keep=keep)
    if split_params and len(p) > 5:
        out += record(PARAMS, rid, p[:5]) + record(PARAMS, rid, p[5:], pad=3)
    elif p:
        out += record(PARAMS, rid, p)
    out += record(PARAMS, rid)
    if body:
        out += record(STDIN, rid, body, pad=(8 - len(body) % 8) % 8)
    return out + record(STDIN, rid)


GET_ENV = [(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b""), (b"PATH_INFO", b"/hello"),
           (b"QUERY_STRING", b"a=1&b=2"), (b"SERVER_NAME", b"localhost"), (b"SERVER_PORT", b"80"),
           (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"HTTP_HOST", b"localhost")]
POST_BODY = b"name=value&other=" + b"x" * 150
POST_ENV = [(b"REQUEST_METHOD", b"POST"), (b"CONTENT_TYPE", b"application/x-www-form-urlencoded"),
            (b"CONTENT_LENGTH", str(len(POST_BODY)).encode()), (b"PATH_INFO", b"/form"),
            (b"HTTP_X_LONG", b"v" * 200)]


def server_streams():
    get_values = record(GET_VALUES, 0, pairs([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MAX_REQS", b""),
                                               (b"FCGI_MPXS_CONNS", b""), (b"NOPE", b"")]))
    mux = (begin(1) + begin(2) + record(PARAMS, 1, pairs(GET_ENV)) + record(PARAMS, 2, pairs(POST_ENV))
           + record(PARAMS, 2) + record(PARAMS, 1) + record(STDIN, 2, POST_BODY[:40])
           + record(STDIN, 1) + record(STDIN, 2, POST_BODY[40:]) + record(STDIN, 2))
    return {
        "get": request(1, GET_ENV),
        "post": request(1, POST_ENV, POST_BODY, split_params=True),
        "get_values": get_values,
        "multiplexed": mux,
        "sequential": request(1, GET_ENV) + request(2, GET_ENV, keep=False),
        # Reuses id 1, valid only when the harness finishes request 1 after its StdinEnd.
        "reuse": request(1, GET_ENV) + request(1, POST_ENV, POST_BODY, keep=False),
        "abort": begin(3) + record(PARAMS, 3, pairs(GET_ENV)) + record(ABORT, 3),
        "refusals": (begin(5, role=AUTHORIZER) + record(PARAMS, 5) + record(42, 0, b"\0" * 8)
                     + b"".join(begin(i) for i in range(10, 16))),
        "data_ignored": request(7, GET_ENV[:2], b"body") + record(DATA, 7, b"filterdata"),
    }


def client_streams():
    def end(rid, app=0, status=0):
        return record(END, rid, struct.pack(">IB3x", app, status))
    body = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world\n"
    return {
        "response": record(STDOUT, 1, body, pad=3) + record(STDOUT, 1) + end(1),
        "stderr": record(STDERR, 2, b"warning\n") + record(STDERR, 2) + record(STDOUT, 2, b"x")
                  + record(STDOUT, 2) + end(2, 3),
        "get_values_result": record(GET_VALUES_RESULT, 0, pairs([(b"FCGI_MAX_CONNS", b"16"),
                                                              (b"FCGI_MPXS_CONNS", b"1")])),
        "refusal": end(9, 0, 3) + record(UNKNOWN, 0, bytes([42]) + b"\0" * 7),
    }


def main():
    streams = server_streams()
    # server_conn prefixes: byte 0 = control byte count | flags, then the control bytes.
    # Chunk sizes cycle from control byte 0, finish decisions from control byte n/2 (bit 0 after
    # Begin: finish at once; after StdinEnd/Abort: finish, so the id can be reused).
    whole = b"\x00"
    chunked = b"\x04\x10\x83\x10\x01"  # chunks 17,388,17,2; finish after StdinEnd/Abort
    mux_chunked = b"\x06\x03\x83\x2f\x10\x20\x01"  # both Begins kept, both finished at end
    corpora = {
        "server_conn": {
            **{f"{k}_whole": whole + v for k, v in streams.items() if k != "reuse"},
            **{f"{k}_chunked": chunked + v for k, v in streams.items() if k != "multiplexed"},
            "multiplexed_chunked": mux_chunked + streams["multiplexed"],
            "multiplexed_nompx": b"\x22\x05\x03" + streams["multiplexed"],
            "refusals_finish": b"\x03\x0f\x02\x05" + streams["refusals"],
            "unknown_type_quiet": b"\x40" + streams["refusals"],
        },
        "params": {
            "get_env": pairs(GET_ENV),
            "post_env": pairs(POST_ENV),
            "empty_names": pairs([(b"", b""), (b"X", b""), (b"", b"y")]),
            "long_form_short_len": b"\x80\x00\x00\x01\x01Ab",
            "dup": pairs([(b"A", b"1"), (b"A", b"2")]),
        },
        "client_conn": client_streams(),
        # status \0 name \0 value ...; a leading 0x01 means UTF-8 instead of latin-1.
        "head": {
            "ok": b"200 OK\0Content-Type\0text/html; charset=utf-8\0Content-Length\0" + b"12",
            "latin1": b"200 D\xe9j\xe0 vu\0X-Latin\0caf\xe9\0X-Tab\0a\tb",
            "crlf_value": b"200 OK\0X-A\0a\r\nSet-Cookie: owned=1",
            "crlf_status": b"200 OK\r\nX-Injected: 1\0X-Ok\0v",
            "crlf_name": b"302 Found\0Location\0/x\0X-Injected: 1\r\nX-Ok\0v",
            "hop": b"204 No Content\0Connection\0close\0Transfer-Encoding\0chunked",
            "informational": b"103 Early Hints\0Link\0</a.css>; rel=preload",
            "status_header": b"200\0Status\0302 Found\0  spaced  \0 v ",
            "utf8": b"\x01200 OK\0X-Euro\0\xe2\x82\xac\0X-U\0\xc3\xa9",
        },
        # web.config bytes, then NUL and "root\napp\nvenv".
        "webconfig": {
            **{f"configs_{name}": read(f"configs/iis/{name}/web.config") + b"\0C:\\inetpub\\wwwroot\\my site\n" + app.encode() + b"\nC:\\venvs\\site"
               for name, app in [("flask", "app.app"), ("django", "mysite.wsgi.application")]},
            "empty": b"<configuration/>",
            "app_settings": (b'<?xml version="1.0" encoding="utf-8"?>\n<configuration><appSettings>'
                             b'<add key="WSGI_HANDLER" value="app.app"/><add key="PYTHONPATH" value="%SystemDrive%\\x;C:\\y"/>'
                             b'<remove key="X"/><clear/><add key="PYFCGI_THREADS" value="4"/></appSettings>'
                             b'<system.webServer><handlers><clear/><add name="Python FastCGI" path="*" verb="*" '
                             b'modules="FastCgiModule" scriptProcessor="C:\\Python\\python.exe|C:\\wfastcgi.py" '
                             b'resourceType="Unspecified"/></handlers><fastCgi/></system.webServer></configuration>'
                             b'\0C:\\"quoted" root\\\napp:application\n'),
            "location": (b'<configuration><location path="static"><system.webServer><handlers>'
                         b'<remove name="pyfcgi"/></handlers></system.webServer></location></configuration>'),
        },
        # args (name=value lines) NUL env (NAME=VALUE lines) NUL pyfcgi.toml NUL web.config.
        "settings": {
            "flags": b"threads=4\nbind=127.0.0.1:9000\nrequest-timeout=inf\napp=x:app\0\0\0",
            "env": b"\0PYFCGI_THREAD=4\nPYFCGI_MAX_BODY_SIZE=10m\nFCGI_WEB_SERVER_ADDRS=127.0.0.1\0\0",
            "toml_example": b"\0\0" + read("configs/pyfcgi.toml") + b"\0",
            "toml_lists": b"\0\0pythonpath = [\"/a\", \"/b\"]\nthreads = 4\ndetailed_errors = true\nworker = 2\n[table]\nx = 1\n\0",
            "webconfig": b"\0SITE=/srv\0\0" + read("configs/iis/flask/web.config"),
            "webconfig_bad": (b"workers=auto\0\0threads = 2\0<configuration><appSettings>"
                              b'<add key="PYFCGI_THREADS" value="four"/><add key="WSGI_HANDLER" value="a.app"/>'
                              b'<add key="PYFCGI_APP" value="b:app"/><add key="PYTHONPATH" value="%SITE%\\lib;x"/>'
                              b'<add key="PYFCGI_REQUEST_TIMEOUT" value="NaN"/></appSettings></configuration>'),
        },
    }
    out_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    for target, seeds in corpora.items():
        d = os.path.join(out_root, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, f"seed_{name}"), "wb") as f:
                f.write(data)
        print(f"seeds: wrote {len(seeds)} inputs to {os.path.relpath(d)}", file=sys.stderr)


def read(rel):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", rel), "rb") as f:
        return f.read()


if __name__ == "__main__":
    main()
