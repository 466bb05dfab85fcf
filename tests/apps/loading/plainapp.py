"""A module with an app, a factory and a nested attribute, for tests/it/app_loading.rs."""


def _answer(text):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [text.encode()]

    return app


app = _answer("plainapp:app")


def create_app(name="default", *, flavour="plain"):
    return _answer(f"plainapp:create_app({name}, {flavour})")


class holder:  # noqa: N801 - an attribute path, not a class API
    app = staticmethod(_answer("plainapp:holder.app"))
