"""The policy in force: read at start and on reload; a broken one is refused whole.

At start a broken policy leaves none in force (phyllod then moves nothing,
so a typo at boot cannot pull devices out of running guests); on reload the
previous policy stays.
"""

from __future__ import annotations

from pathlib import Path

from phyllod.core.model import Device
from phyllod.core.policy import DEFAULT_ASK_TIMEOUT, DEFAULT_DEBOUNCE, Policy
from phyllod.core.policy_problems import PolicyError
from phyllod.host.policy_files import load_policy_dir
from phyllod.host.systemd_glue import MessageId
from phyllod.service.journal import fields, log


class PolicyInForce:
    """The policy (None until one loads) and the problems of the last refused load."""

    def __init__(self, policy_dir: Path) -> None:
        self._policy_dir = policy_dir
        self.policy: Policy | None = None
        self.errors: tuple[str, ...] = ()

    def load(self, initial: bool = False) -> bool:
        try:
            policy = load_policy_dir(self._policy_dir)
        except PolicyError as e:
            self.errors = tuple(str(p) for p in e.problems)
            for problem in e.problems:
                log.error("policy: %s", problem,
                          **fields(rule=problem.rule, event=MessageId.POLICY_REFUSED))
            if initial:
                log.error("no usable policy: phyllod moves nothing until it is fixed and "
                          "reloaded (systemctl reload phyllod, or SIGHUP)")
            else:
                log.error("policy reload refused; the previous policy stays in force")
            return False
        self.policy = policy
        self.errors = ()
        log.info("policy: %d rules from %d files in %s", len(policy.rules), len(policy.files),
                 self._policy_dir, **fields(event=MessageId.POLICY_LOADED))
        return True

    def debounce(self, d: Device) -> float:
        """How long an unplug of ``d`` is doubted (phyllod's default without a policy)."""
        return self.policy.debounce(d) if self.policy is not None else DEFAULT_DEBOUNCE

    @property
    def files(self) -> tuple[str, ...]:
        return self.policy.files if self.policy is not None else ()

    @property
    def ask_timeout(self) -> int:
        return (self.policy.settings.ask_timeout if self.policy is not None
                else DEFAULT_ASK_TIMEOUT)
