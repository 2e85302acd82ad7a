"""Load tests (locust) and the connection benchmark for the realtime server.

* `loadtests.setup`: create exams ("halls") and sessions through the REST API; write a plan.
* `loadtests/locustfile.py`: candidate, proctor and supervisor users for locust.
* `loadtests.bench`: a lean asyncio benchmark that starts its own servers and writes JSON + PNG.

See docs/performance.md for how to run them and the figures.
"""
