"""``RoutingContext``: build once per process, then one routed session per stream.

Sessions made by one context share its router, clock, retry policy, service factory and — the
point of it — its routing state: circuit breakers, health views, the failure ledger and
admission limits. So an endpoint that rejects one session's key is skipped (``breaker_open``)
by the next session's decision, and ``max_concurrent_sessions`` holds across every connection
of the process instead of per session::

    context = RoutingContext.from_toml("endpoints.toml")          # once, at start-up

    async def on_connection(conditions, language):                 # per client connection
        session = context.session(conditions, language=language)
        async with session.stream() as s:
            ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Self

from sttrouter.clock import SYSTEM_CLOCK, Clock
from sttrouter.endpoint import STTEndpoint
from sttrouter.errors import ConfigError
from sttrouter.events import EventListener, RouteEvent
from sttrouter.panel.budgets import BudgetBook
from sttrouter.panel.device import Conditions
from sttrouter.panel.policy import Policy
from sttrouter.panel.registry import EndpointRegistry
from sttrouter.panel.router import Decision, Router
from sttrouter.resilience import HealthConfig, HealthMonitor, RetryPolicy, service_probe
from sttrouter.service import ServiceFactory, STTService
from sttrouter.session import RoutedSession, SessionConfig
from sttrouter.state import InMemoryState, StateStore, store_from_config

__all__ = ["RoutingContext"]


class RoutingContext:
    """Everything routed sessions of one process share.

    Args:
        registry_or_router: the endpoints (a registry, routed with ``policy``), or a ready
            :class:`~sttrouter.Router`.
        policy: routing rules for a registry (the default policy when ``None``); give a
            router's policy to the router itself.
        clock: time source for sessions and the default state (default: the state's clock,
            else the system clock).
        state: where breakers, health, failures and admission live (default: a fresh
            :class:`~sttrouter.state.InMemoryState` on ``clock``).
        retry: how sessions sweep their chain again when every endpoint failed.
        service_factory: builds the adapter for an endpoint (default:
            :func:`sttrouter.providers.create_service` on the context's clock).
        session_config: the default :class:`~sttrouter.SessionConfig` of every session.
        on_event: called with every route event of every session (besides a session's own
            listener).
        budgets: the tenants' budgets and their spend (default: a book over the registry's
            ``[[budget]]`` tables, counting in this process).
    """

    def __init__(
        self,
        registry_or_router: EndpointRegistry | Router,
        *,
        policy: Policy | None = None,
        clock: Clock | None = None,
        state: StateStore | None = None,
        retry: RetryPolicy | None = None,
        service_factory: ServiceFactory | None = None,
        session_config: SessionConfig | None = None,
        on_event: EventListener | None = None,
        budgets: BudgetBook | None = None,
    ) -> None:
        if isinstance(registry_or_router, Router):
            if policy is not None:
                raise ConfigError(
                    "a policy goes to the Router you pass (Router(registry, policy)), or pass "
                    "the registry with policy=...",
                    field="policy",
                )
            self.router = registry_or_router
        elif isinstance(registry_or_router, EndpointRegistry):
            self.router = Router(registry_or_router, policy)
        else:
            raise ConfigError(
                "RoutingContext needs an EndpointRegistry or a Router, got "
                f"{type(registry_or_router).__name__}"
            )
        self.clock: Clock = clock or (state.clock if state is not None else SYSTEM_CLOCK)
        self.state: StateStore = state if state is not None else InMemoryState(clock=self.clock)
        self.retry = retry or RetryPolicy()
        self.service_factory: ServiceFactory = service_factory or self._create_service
        self.session_config = session_config or SessionConfig()
        self.on_event = on_event
        self.budgets = budgets if budgets is not None else BudgetBook(self.registry.budgets)

    @classmethod
    def from_toml(
        cls,
        path: str | os.PathLike[str],
        *,
        policy: Policy | str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        state: StateStore | None = None,
        retry: RetryPolicy | None = None,
        service_factory: ServiceFactory | None = None,
        session_config: SessionConfig | None = None,
        on_event: EventListener | None = None,
        budgets: BudgetBook | None = None,
    ) -> Self:
        """A context over the registry TOML file at ``path``; ``policy`` may be a
        :class:`~sttrouter.Policy` or the path of a policy TOML file. The file's ``[state]``
        table, when it has one, chooses the state store (``url_env`` names the environment
        variable that holds the Redis URL); ``state=`` overrides it."""
        if policy is not None and not isinstance(policy, Policy):
            policy = Policy.load(policy)
        registry = EndpointRegistry.load(path)
        if state is None and registry.state:
            state = store_from_config(registry.state, clock=clock, source=registry.source)
        return cls(
            registry,
            policy=policy,
            clock=clock,
            state=state,
            retry=retry,
            service_factory=service_factory,
            session_config=session_config,
            on_event=on_event,
            budgets=budgets,
        )

    @property
    def registry(self) -> EndpointRegistry:
        return self.router.registry

    def decide(
        self,
        conditions: Conditions | None = None,
        language: str | None = None,
        *,
        streaming: bool = True,
        tenant: str | None = None,
    ) -> Decision:
        """The router's decision for ``conditions``, skipping what the shared breakers and
        health views say is unavailable (reason ``breaker_open``), with each pool's replicas
        least loaded first, under ``tenant``'s budgets when one is given."""
        return self.router.decide(
            conditions or Conditions(),
            language,
            streaming,
            health=self.state.view,
            load=self.state.admission,
            budget=None if tenant is None else self.budgets.view(tenant),
        )

    def session(
        self,
        conditions: Conditions | None = None,
        *,
        language: str | None = None,
        chain: Sequence[STTEndpoint | str] | None = None,
        config: SessionConfig | None = None,
        on_event: EventListener | None = None,
        tenant: str | None = None,
    ) -> RoutedSession:
        """A routed session that shares this context's breakers, health and admission limits.

        Args:
            conditions: the device's state (default :class:`~sttrouter.Conditions()`); the
                chain is decided for it at every start and failover.
            language: the language the stream speaks, when known.
            chain: a fixed chain (endpoints, or ids of registered endpoints) instead of a
                decision; the shared breakers and limits still apply.
            config: this session's settings (default: the context's ``session_config``).
            on_event: this session's route events (the context's listener hears them too).
            tenant: whose budgets apply (see ``[[budget]]``): a spent ``refuse`` budget raises
                :class:`~sttrouter.errors.BudgetExceeded` here, a spent ``free_only`` one
                leaves priced endpoints out of the session's decisions, and the session's
                spend is metered while it streams.

        Raises:
            BudgetExceeded: ``tenant``'s ``refuse`` budget is spent.
        """
        fixed = None if chain is None else tuple(self._endpoint(e) for e in chain)
        meter = None
        if tenant is not None:
            self.budgets.check(tenant)
            meter = self.budgets.meter(tenant)
        decider = self.router.bind(
            load=self.state.admission,
            budget=None if tenant is None else self.budgets.view(tenant),
            before=None if meter is None else meter.sample,
        )
        session = RoutedSession(
            fixed,
            router=None if fixed is not None else decider,
            conditions=conditions,
            language=language,
            service_factory=self.service_factory,
            clock=self.clock,
            breakers=self.state.breakers,
            health=self.state.health,
            admission=self.state.admission,
            retry=self.retry,
            config=config or self.session_config,
            on_event=_both(self.on_event, on_event),
        )
        if meter is not None:
            meter.usage, meter.active = session.usage, lambda: session.is_streaming
            self.budgets.attach(meter)
        return session

    def monitor(self, config: HealthConfig | None = None) -> HealthMonitor:
        """A health monitor over every registered endpoint, probing through the context's
        service factory (handshakes and health requests, never audio), added to the shared
        health views. Run it in a task: ``tg.start_soon(context.monitor().run)``."""
        mon = HealthMonitor(
            {ep.id: service_probe(ep, self.service_factory) for ep in self.registry},
            config=config,
            clock=self.clock,
            on_change=self.state.health_changed,
        )
        self.state.health.add(mon)
        return mon

    async def start(self) -> None:
        """Connect the state store and load what the fleet already knows (a no-op in memory;
        bounded by the store's deadline when its server is down)."""
        await self.state.start()

    async def aclose(self) -> None:
        """Release the state store (a no-op in memory)."""
        await self.state.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"RoutingContext({self.registry!r}, state={self.state!r})"

    def _create_service(self, endpoint: STTEndpoint) -> STTService:
        from sttrouter.providers import create_service  # engines load only when used

        return create_service(endpoint, clock=self.clock)

    def _endpoint(self, item: STTEndpoint | str) -> STTEndpoint:
        if isinstance(item, STTEndpoint):
            return item
        endpoint = self.registry.get(item)
        if endpoint is None:
            raise ConfigError(
                f"chain names {item!r}, which is not registered; registered: "
                f"{[ep.id for ep in self.registry]}",
                field="chain",
            )
        return endpoint


def _both(first: EventListener | None, second: EventListener | None) -> EventListener | None:
    if first is None or second is None:
        return first or second

    def both(event: RouteEvent) -> None:
        first(event)
        second(event)

    return both
