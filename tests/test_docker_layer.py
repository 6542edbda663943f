"""orchestrator.docker_layer.remove: a container that is gone, or whose removal another orchestrator already started
(the engine answers 409 "removal … already in progress"), is what removing it wanted; any other refusal is raised.
The engine's 409 cannot be provoked on demand, so its answer is replayed as docker-py raises it."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from orchestrator.docker_layer import remove


def _answer(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(f"{status} Client Error", response=response, explanation=explanation)


class _Refusing:
    def __init__(self, error: Exception):
        self.error = error

    def remove(self, force: bool) -> None:
        assert force
        raise self.error


def test_a_removal_already_in_progress_or_a_gone_container_is_not_an_error():
    remove(_Refusing(_answer(409, "removal of container abc is already in progress")))
    remove(_Refusing(docker.errors.NotFound("No such container: abc")))


def test_any_other_refusal_is_raised():
    with pytest.raises(docker.errors.APIError):
        remove(_Refusing(_answer(409, "You cannot remove a running container: stop it first")))
    with pytest.raises(docker.errors.APIError):
        remove(_Refusing(_answer(500, "driver failed")))
