"""Signed webhooks (issue 13): every outcome of a file, posted to the callback URLs of the
clients that may read it, signed per Standard Webhooks.

* ``messages``: which audited changes are webhook messages, and their JSON;
* ``signing``: the ``webhook-*`` headers (the Standard Webhooks reference code signs);
* ``targets``: where a callback may point (no loopback, link-local or private address
  unless listed), checked at registration and again on every connection;
* ``deliver``: the worker that posts the outbox (``index.outbox``) at least once, with
  backoff, and gives a message up as dead after a bounded number of attempts.
"""
