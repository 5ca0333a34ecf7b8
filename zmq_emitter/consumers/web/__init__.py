"""The web view, ``zmq-emitter web`` (docs/web.md): runs live in a browser.

``model.py`` is the run model (sans-I/O: statuses, host counts, failures, a bounded window of events
and the per-publisher cursors pages resume from); ``server.py`` the Starlette app on uvicorn and the
``AsyncSubscriber`` task that feeds the model; ``static/`` the page (plain JavaScript modules and CSS,
no build step, served from the installed package).  Needs the ``web`` extra:
``pip install 'ansible-runner-zmq[web]'``.
"""
