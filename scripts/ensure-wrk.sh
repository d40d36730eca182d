#!/usr/bin/env bash
# The wrk load generator (apt), for benchmarks/serving.py and the test that runs its quick mode
# through wrk. Best effort: without it the benchmarks and that test use the asyncio generator.
exec bash "$(dirname "$0")/apt-ensure.sh" wrk wrk "the benchmarks will use their asyncio load generator"
