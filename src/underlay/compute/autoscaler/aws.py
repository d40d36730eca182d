"""The EC2 provider: node groups as EC2 instances, on-demand or spot. Not runnable here (no
cloud); its calls are checked against moto's EC2 mock only, so treat it as a starting point
and try it on a test account before relying on it (docs/autoscaling.md).

Each instance boots an image (``autoscaler.aws_image_id``) that has underlay installed; its
user data exports the node's agent token and labels and runs ``underlay agent``. Instances
are tagged ``underlay:group`` and ``underlay:node``, which is how :meth:`Ec2Provider.list`
finds them. A spot instance that EC2 terminated with the reason
``Server.SpotInstanceTermination`` is reported ``reclaimed`` once, so its work is requeued at
once. Prices are not looked up: give each group a ``price_per_hour``. Instances are not
stopped with the server (:meth:`close` does nothing): they are the cluster.

The agent token travels in the user data, which any process on the instance can read from
the metadata service: run nothing else on these instances, or fetch the token from a secret
store in your image instead.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from underlay.compute.autoscaler.providers import Instance, LaunchContext, NodeGroup
from underlay.config import Settings
from underlay.errors import InvalidInput

GROUP_TAG, NODE_TAG = "underlay:group", "underlay:node"
SPOT_LOSS = "Server.SpotInstanceTermination"
_STATES = {"pending": "pending", "running": "running"}


class Ec2Provider:
    """Node groups on EC2 (see the module docstring); ``client`` is a boto3 EC2 client."""

    name = "aws"
    supports_spot = True

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.config = settings.compute.autoscaler
        if client is None:
            try:
                import boto3
            except ImportError as exc:
                raise InvalidInput(
                    "the aws autoscaler provider needs boto3: pip install 'underlay[aws]'"
                ) from exc
            client = boto3.client("ec2", region_name=self.config.aws_region or None)
        self.ec2 = client
        self._reported: set[str] = set()

    def launch(self, group: NodeGroup, count: int, context: LaunchContext) -> list[Instance]:
        if not self.config.aws_image_id or not group.instance_type:
            raise InvalidInput(
                f"group {group.name}: the aws provider needs autoscaler.aws_image_id and the "
                "group's instance_type"
            )
        out = []
        for _ in range(count):
            node = f"{group.name}-{secrets.token_hex(4)}"
            response = self.ec2.run_instances(**self._request(group, node, context))
            made = response["Instances"][0]
            launched = made["LaunchTime"].timestamp()
            instance = Instance(made["InstanceId"], group.name, node, "pending", launched)
            out.append(replace(instance, spot=group.spot))
        return out

    def _request(self, group: NodeGroup, node: str, context: LaunchContext) -> dict[str, Any]:
        tags = [{"Key": GROUP_TAG, "Value": group.name}, {"Key": NODE_TAG, "Value": node}]
        request: dict[str, Any] = {
            "ImageId": self.config.aws_image_id,
            "InstanceType": group.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data(context.server_url, context.token_for(node), node, group),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        if self.config.aws_subnet_id:
            request["SubnetId"] = self.config.aws_subnet_id
        if self.config.aws_security_group_ids:
            request["SecurityGroupIds"] = list(self.config.aws_security_group_ids)
        if group.spot:
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        return request

    def terminate(self, ids: Sequence[str]) -> None:
        if ids:
            self.ec2.terminate_instances(InstanceIds=list(ids))

    def list(self) -> list[Instance]:
        out = []
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": [GROUP_TAG]}]
        )
        for page in pages:
            for reservation in page["Reservations"]:
                for made in reservation["Instances"]:
                    instance = self._instance(made)
                    if instance is not None:
                        out.append(instance)
        return out

    def _instance(self, made: dict[str, Any]) -> Instance | None:
        tags = {t["Key"]: t["Value"] for t in made.get("Tags", [])}
        state = _STATES.get(made["State"]["Name"])
        spot = made.get("InstanceLifecycle") == "spot"
        if state is None:
            lost = made.get("StateReason", {}).get("Code") == SPOT_LOSS
            if not lost or made["InstanceId"] in self._reported:
                return None
            self._reported.add(made["InstanceId"])
            state = "reclaimed"
        return Instance(
            made["InstanceId"],
            tags.get(GROUP_TAG, ""),
            tags.get(NODE_TAG, made["InstanceId"]),
            state,  # type: ignore[arg-type]
            made["LaunchTime"].timestamp(),
            spot,
        )

    def price(self, group: NodeGroup) -> float:
        raise InvalidInput(
            f"group {group.name}: the aws provider does not look prices up; set its price_per_hour"
        )

    def close(self) -> None:
        """Nothing: EC2 instances are the cluster and outlive this server process."""


def user_data(server_url: str, token: str, node: str, group: NodeGroup) -> str:
    """The boot script of a node: its agent, with the node's token and labels."""
    labels = dict(label.split("=", 1) for label in group.node_labels)
    lines = [
        "#!/bin/sh",
        f"export UNDERLAY_TOKEN={shlex.quote(token)}",
        f"export UNDERLAY_COMPUTE__NODE_LABELS={shlex.quote(json.dumps(labels))}",
        f"exec underlay agent --server {shlex.quote(server_url)} --name {shlex.quote(node)}",
    ]
    return "\n".join(lines) + "\n"
