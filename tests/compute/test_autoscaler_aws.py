"""The EC2 provider's calls against moto's EC2 mock on 127.0.0.1 (no cloud here): what it
launches, how it finds and terminates its instances, and the boot script of a node."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from underlay.compute.autoscaler.aws import Ec2Provider, user_data
from underlay.compute.autoscaler.providers import LaunchContext, NodeGroup
from underlay.config import Settings
from underlay.errors import InvalidInput

GROUP = NodeGroup("gpu", 8000, 32768, "A100", 1, max_nodes=3, instance_type="p4d.24xlarge")


@pytest.fixture(scope="module")
def ec2() -> Iterator[Any]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "ec2",
        endpoint_url=f"http://{host}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    try:
        yield client
    finally:
        client.close()
        server.stop()


def provider(ec2: Any, tmp_path: Any) -> Ec2Provider:
    image = ec2.describe_images()["Images"][0]["ImageId"]
    autoscaler = {"provider": "aws", "aws_image_id": image, "aws_region": "us-east-1"}
    settings = Settings(home=tmp_path, compute={"autoscaler": autoscaler})
    return Ec2Provider(settings, client=ec2)


def test_launch_list_and_terminate(ec2: Any, tmp_path: Any) -> None:
    aws = provider(ec2, tmp_path)
    tokens: dict[str, str] = {}
    context = LaunchContext("https://underlay.example", lambda n: tokens.setdefault(n, f"t-{n}"))
    made = aws.launch(GROUP, 2, context)
    assert [i.group for i in made] == ["gpu", "gpu"] and set(tokens) == {i.node for i in made}
    listed = {i.id: i for i in aws.list()}
    assert {i.id for i in made} <= set(listed)
    assert {listed[i.id].node for i in made} == set(tokens)
    raw = ec2.describe_instance_attribute(InstanceId=made[0].id, Attribute="userData")
    script = base64.b64decode(raw["UserData"]["Value"]).decode()
    assert f"--name {made[0].node}" in script and tokens[made[0].node] in script
    aws.terminate([made[0].id])
    assert made[0].id not in {i.id for i in aws.list()}


def test_a_group_without_an_instance_type_or_price_is_refused(ec2: Any, tmp_path: Any) -> None:
    aws = provider(ec2, tmp_path)
    with pytest.raises(InvalidInput, match="instance_type"):
        aws.launch(replace(GROUP, instance_type=""), 1, LaunchContext("http://x", str))
    with pytest.raises(InvalidInput, match="price_per_hour"):
        aws.price(GROUP)


def test_a_spot_loss_is_reported_once_as_reclaimed(tmp_path: Any, ec2: Any) -> None:
    aws = provider(ec2, tmp_path)
    gone = {
        "InstanceId": "i-0123",
        "State": {"Name": "terminated"},
        "StateReason": {"Code": "Server.SpotInstanceTermination"},
        "InstanceLifecycle": "spot",
        "Tags": [{"Key": "underlay:group", "Value": "gpu"}, {"Key": "underlay:node", "Value": "n"}],
        "LaunchTime": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    first = aws._instance(gone)
    assert first is not None and first.state == "reclaimed" and first.spot
    assert aws._instance(gone) is None
    assert aws._instance({**gone, "InstanceId": "i-9", "StateReason": {"Code": "User"}}) is None


def test_the_boot_script_quotes_what_it_is_given() -> None:
    script = user_data("http://s:1", "tok'en", "gpu-1", replace(GROUP, spot=True))
    assert "export UNDERLAY_TOKEN='tok'\"'\"'en'" in script
    assert "underlay.io/spot" in script and script.startswith("#!/bin/sh\n")
