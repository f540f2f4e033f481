from django.db import models


class Room(models.Model):
    """A chat room, whose websockets are the group ``room.<name>``."""

    # A slug fits both the URL pattern <slug:name> and the characters that
    # group names allow; "room." and 50 characters are within their limit.
    name = models.SlugField(max_length=50, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name
