"""
Live notifications on every page of a logged-in user.

``base.html`` loads ``notifications.js`` for logged-in users: it keeps a
websocket open to :func:`socket`, which :func:`~django_websocket.send_to_user`
reaches in every tab. This page sends notifications from ordinary views;
``manage.py notify`` sends them from the command line.

"""

import logging

import gevent
from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_websocket import BroadcastError, require_websocket

from .events import notify

logger = logging.getLogger(__name__)


class NotifyForm(forms.Form):
    username = forms.CharField(label="To", max_length=150)
    text = forms.CharField(label="Text", max_length=200)

    def clean_username(self):
        username = self.cleaned_data["username"]
        User = get_user_model()
        try:
            self.recipient = User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise forms.ValidationError(f"There is no user named {username}.") from None
        return username


class JobForm(forms.Form):
    seconds = forms.IntegerField(min_value=0, max_value=60, initial=3)


@login_required
def index(request):
    """Send a notification to a user, or start a job that notifies its user."""
    form = NotifyForm(request.POST or None)
    if form.is_valid():
        try:
            text = f"{request.user.get_username()} says: {form.cleaned_data['text']}"
            notify(form.recipient, text)
        except BroadcastError:
            messages.error(request, "Not sent: the notification service is unreachable.")
        else:
            messages.success(request, f"Sent to {form.recipient.get_username()}.")
        return redirect("notifications:index")
    return render(request, "notifications/index.html", {"form": form, "job_form": JobForm()})


@login_required
@require_POST
def start_job(request):
    """Start a job in the background; it notifies its user when it is done."""
    form = JobForm(request.POST)
    if not form.is_valid():
        messages.error(request, "A job takes from 0 to 60 seconds.")
        return redirect("notifications:index")
    seconds = form.cleaned_data["seconds"]
    # A real project would queue a Celery task: send_to_user() works the
    # same from a Celery worker, with the Redis backend. Here a greenlet of
    # the server does the "work".
    gevent.spawn(run_job, request.user.pk, seconds)
    messages.info(request, f"Job started: a notification comes in {seconds} s, in every tab.")
    return redirect("notifications:index")


def run_job(user_id, seconds):
    """Work for ``seconds``, then tell the user, in every tab."""
    gevent.sleep(seconds)  # the work
    try:
        notify(user_id, f"Your {seconds}-second job is done.")
    except BroadcastError:
        logger.warning("Could not notify user %s that a job is done", user_id, exc_info=True)


@require_websocket
def socket(request):
    if not request.user.is_authenticated:
        raise PermissionDenied  # 403: a redirect to the login page is no use here
    # Accepted, the websocket is in its user's group: what send_to_user()
    # sends goes straight to the browser. When the session logs out, in any
    # tab, django_websocket closes it with 1008.
    for _ in request.websocket:  # until the page closes it
        pass  # the page sends nothing
