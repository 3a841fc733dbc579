"""Pure-Python reference implementations of the Cython parsers in kinesyslog/_fast/.

Each module here has the public API of the extension module of the same name, as its stub
(kinesyslog/_fast/<name>.pyi) describes it, and is written from the RFCs and
docs/contract.md §4 for clarity rather than speed:

* framing.py: RFC 6587 stream framing and RFC 5426 datagrams (§4.1, §4.2);
* proxy.py: the PROXY protocol, versions 1 and 2 (§4.4), and address text (§4.7);
* gelf.py: GELF chunks, payloads, the GELF stream framer, the JSON check and the GELF
  timestamp (§4.5, §4.6, §4.9);
* syslog.py: timestamps from syslog headers (§4.9);
* events.py: the event JSON, ids and per-stream buffers (§4.8, §4.10).

The unit tests run against both implementations (the `backend` fixture, tests/backends.py)
and the fuzzers in fuzz/ compare the two on random input, so that the two cannot drift
apart unnoticed. Nothing here is used by the relay.
"""
