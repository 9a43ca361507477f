"""WebSocket channel multiplexing (SPEC §6.16, §9.4) in one place: the hub of named channels and its WebSocket
protocol (``hub``), and the ``ws-mux`` middleware that attaches upgrades to a router's hub (``middleware``)."""
