from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("hello", views.hello),
    path("form", views.form),
    path("upload", views.upload),
    path("stream", views.stream),
    path("redirect", views.to_hello),
    path("cookie/set", views.cookie_set),
    path("cookie/get", views.cookie_get),
    path("u/<str:name>", views.user),
]
