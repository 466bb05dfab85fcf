"""A module inside a package, for wfastcgi's dotted spec form."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"webpkg.site.wsgi.application"]


def make_app():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"webpkg.site.wsgi.make_app()"]

    return app
