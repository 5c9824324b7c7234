"""The demo's data set, generated from a seed: customers of a shop who come from the web, the
mobile app, the CRM and the tills, as Segment-spec events (`mosaic.events.v1.Event`). Pure logic: the same seed and size
give the same events (message ids included), so a second load within ingestion's dedupe
window is dropped as duplicates instead of doubling every order.

Each customer has a first channel and a journey in two steps (`history` before `linked`):

- web and mobile: anonymous page or screen views, then a sign-up (`identify` with the user id
  *and* the anonymous id): the anonymous visitor becomes the known customer;
- CRM: an `identify` from the CRM export first; half of them also browse the web anonymously
  and later log in there, which links two profiles that existed apart (a merge);
- point of sale: a till order with the loyalty card's number (the anonymous id, since Segment's
  spec wants one of the two ids) and the e-mail of the receipt; half of them later sign up
  on the web (after an anonymous visit: a merge of the till's profile and the visitor's).

Orders (`Order Completed`, with revenue) spread over the last 90 days, after the sign-up; the
consent choice for marketing rides on the sign-up (`context.consent.categoryPreferences`), as a
consent banner's SDK sends it. Events come in three phases (`history`, `linked`, `orders`) so
the journeys happen in that order whatever the partitions do.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from mosaic.events.v1 import event_pb2

TYPES = {
    "identify": event_pb2.EVENT_TYPE_IDENTIFY,
    "track": event_pb2.EVENT_TYPE_TRACK,
    "page": event_pb2.EVENT_TYPE_PAGE,
    "screen": event_pb2.EVENT_TYPE_SCREEN,
}

SOURCES = ("web", "mobile", "crm", "pos")
PHASES = ("history", "linked", "orders")
FIRST_NAMES = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Alan", "Frances", "Dennis", "Radia")
LAST_NAMES = ("Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Turing", "Allen", "Ritchie")
CITIES = ("Paris", "Lyon", "Berlin", "Madrid", "London", "Austin", "Osaka")
PAGES = ("/", "/shoes", "/shirts", "/sale", "/cart")
SCREENS = ("Home", "Catalog", "Product", "Cart")
# How many orders a customer places in the 90 days: none, one, a few, many.
ORDER_COUNTS = ((0, 0.30), (1, 0.25), (2, 0.18), (3, 0.12), (5, 0.10), (8, 0.05))


@dataclass
class Customer:
    """One person of the data set, as the report and its checks need to know them."""

    user_id: str  # "" for a till customer who never signed up
    email: str
    channel: str  # the first source they came through
    anonymous_ids: list[str] = field(default_factory=list)  # web and app visitors
    card: str = ""  # a till customer's loyalty card, the anonymous id of their till orders
    marketing: bool | None = None  # the consent choice made at sign-up (None: never asked)
    orders: int = 0
    revenue: float = 0.0


@dataclass
class DataSet:
    customers: list[Customer]
    # phase -> source -> events, in time order
    events: dict[str, dict[str, list[event_pb2.Event]]]

    @property
    def event_count(self) -> int:
        return sum(len(events) for by_source in self.events.values() for events in by_source.values())

    @property
    def identifier_count(self) -> int:
        """Identifiers the data set gives (user ids, anonymous ids, cards, e-mails)."""
        return sum(bool(c.user_id) + len(c.anonymous_ids) + bool(c.card) + 1 for c in self.customers)

    @property
    def expected_merges(self) -> int:
        """Journeys that link two profiles which existed apart (CRM or till, then a web login)."""
        return sum(1 for c in self.customers if c.channel in ("crm", "pos") and c.anonymous_ids and c.user_id)


def generate(customers: int = 3000, seed: int = 7, now: datetime | None = None) -> DataSet:
    """The data set for `customers` people; `seed` fixes every choice and id."""
    if customers < 1:
        raise ValueError("customers must be at least 1")
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    events: dict[str, dict[str, list[event_pb2.Event]]] = {p: {source: [] for source in SOURCES} for p in PHASES}
    counter = iter(range(1 << 62))

    def emit(phase: str, source: str, body: dict, at: datetime) -> None:
        events[phase][source].append(_event(body, f"demo-{seed}-{next(counter)}", at))

    def anonymous_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    people = []
    for number in range(customers):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        channel = rng.choices(SOURCES, weights=(40, 25, 20, 15))[0]
        user_id = f"cust-{number:05d}"
        email = f"{first}.{last}.{number}@example.com".lower()
        person = Customer(user_id, email, channel)
        traits = {"email": email, "first_name": first, "last_name": last, "city": rng.choice(CITIES)}
        joined = now - timedelta(days=rng.uniform(5, 120))
        person.marketing = rng.choices((True, False, None), weights=(55, 25, 20))[0]
        context = (
            {"consent": {"categoryPreferences": {"Marketing": person.marketing}}}
            if person.marketing is not None
            else {}
        )
        browse = rng.random() < 0.5  # a CRM or till customer who also browses the web first
        if channel in ("web", "mobile"):
            visitor = anonymous_id()
            person.anonymous_ids.append(visitor)
            for view in range(rng.randint(1, 2)):
                at = joined - timedelta(hours=view + 1)
                if channel == "web":
                    emit("history", "web", {"type": "page", "anonymousId": visitor, "name": rng.choice(PAGES)}, at)
                else:
                    screen = {"type": "screen", "anonymousId": visitor, "name": rng.choice(SCREENS)}
                    emit("history", "mobile", screen, at)
            signup = {"type": "identify", "userId": user_id, "anonymousId": visitor, "traits": traits}
            emit("linked", channel, {**signup, "context": context}, joined)
        elif channel == "crm":
            emit(
                "history", "crm", {"type": "identify", "userId": user_id, "traits": traits, "context": context}, joined
            )
            if browse:
                visitor = anonymous_id()
                person.anonymous_ids.append(visitor)
                emit("history", "web", {"type": "page", "anonymousId": visitor, "name": "/login"}, joined)
                emit("linked", "web", {"type": "identify", "userId": user_id, "anonymousId": visitor}, joined)
        else:  # a till customer: known by the receipt's e-mail only, until a web sign-up
            order_at = joined
            person.card = f"card-{number:05d}"
            till = {"type": "track", "event": "Order Completed", "anonymousId": person.card, "traits": {"email": email}}
            revenue = round(rng.uniform(15, 180), 2)
            emit("history", "pos", {**till, "properties": {"revenue": revenue, "order_id": f"pos-{number}"}}, order_at)
            person.orders, person.revenue = 1, revenue
            if browse:
                visitor = anonymous_id()
                person.anonymous_ids.append(visitor)
                emit("history", "web", {"type": "page", "anonymousId": visitor, "name": "/signup"}, joined)
                signup = {"type": "identify", "userId": user_id, "anonymousId": visitor, "traits": traits}
                emit("linked", "web", {**signup, "context": context}, joined + timedelta(minutes=5))
            else:
                person.user_id = ""
                person.marketing = None
        _orders(rng, person, number, joined, now, emit)
        people.append(person)
    return DataSet(people, events)


def _orders(rng: random.Random, person: Customer, number: int, joined: datetime, now: datetime, emit) -> None:
    """The customer's orders over the last 90 days, after they joined, from their channel."""
    count = rng.choices([n for n, _ in ORDER_COUNTS], weights=[w for _, w in ORDER_COUNTS])[0]
    earliest = max(joined, now - timedelta(days=89))
    span = (now - earliest).total_seconds()
    source = {"web": "web", "mobile": "mobile", "crm": "web", "pos": "pos"}[person.channel]
    for index in sorted(rng.uniform(0, span) for _ in range(count)):
        at = earliest + timedelta(seconds=index)
        revenue = round(rng.lognormvariate(4.0, 0.6), 2)
        order = {
            "type": "track",
            "event": "Order Completed",
            "properties": {"revenue": revenue, "order_id": f"o-{number}-{person.orders}"},
        }
        if person.user_id:
            order["userId"] = person.user_id
        else:
            order["anonymousId"] = person.card
            order["traits"] = {"email": person.email}
        emit("orders", source, order, at)
        person.orders += 1
        person.revenue += revenue


def _event(body: dict, message_id: str, at: datetime) -> event_pb2.Event:
    """A Segment-spec call (`type`, `userId`, `anonymousId`, `event`, `name` and its objects) as
    the Event ingestion takes."""
    event = event_pb2.Event(
        type=TYPES[body["type"]],
        message_id=message_id,
        user_id=body.get("userId", ""),
        anonymous_id=body.get("anonymousId", ""),
        event=body.get("event", ""),
        name=body.get("name", ""),
    )
    for name in ("properties", "traits", "context"):
        if body.get(name):
            getattr(event, name).update(body[name])
    event.timestamp.FromDatetime(at)
    return event
