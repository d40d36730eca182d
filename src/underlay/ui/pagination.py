"""Pages of a list: at most ``per_page`` rows read (LIMIT/OFFSET), the total counted in SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from starlette.datastructures import URL

T = TypeVar("T")

PER_PAGE = 50
MAX_PAGE = 1_000_000


@dataclass
class Link:
    label: str
    href: str | None  # None: the current page or a gap
    current: bool = False


@dataclass
class Page(Generic[T]):
    """One page of a list and the links to its neighbours."""

    items: list[T]
    page: int
    per_page: int
    total: int
    links: list[Link] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def first_index(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.total else 0

    @property
    def last_index(self) -> int:
        return min(self.total, self.page * self.per_page)


def clamp_page(value: int | None) -> int:
    return min(max(1, value or 1), MAX_PAGE)


def href_for(url: URL, page: int) -> str:
    """``url`` with its ``page`` parameter set (kept relative: path and query only)."""
    params = [(k, v) for k, v in parse_qsl(url.query, keep_blank_values=True) if k != "page"]
    if page > 1:
        params.append(("page", str(page)))
    query = urlencode(params)
    return url.path + (f"?{query}" if query else "")


def page_links(url: URL, page: int, pages: int) -> list[Link]:
    """Previous, a window of page numbers around the current one (with first and last), next."""
    links = [Link("Previous", href_for(url, page - 1) if page > 1 else None)]
    shown = sorted({1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)})
    previous = 0
    for number in shown:
        if number - previous > 1:
            links.append(Link("…", None))
        links.append(Link(str(number), href_for(url, number), current=number == page))
        previous = number
    links.append(Link("Next", href_for(url, page + 1) if page < pages else None))
    return links


def paginate(
    items: list[T], *, total: int, page: int, url: URL, per_page: int = PER_PAGE
) -> Page[T]:
    result = Page(items, page, per_page, total)
    result.links = page_links(url, page, result.pages)
    return result


def paginate_query(
    session: Session, query: Select[Any], *, page: int, url: URL, per_page: int = PER_PAGE
) -> Page[Any]:
    """Run one page of ``query`` (already ordered) and count its rows in SQL."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = list(session.execute(query.limit(per_page).offset((page - 1) * per_page)).all())
    return paginate(rows, total=total, page=page, url=url, per_page=per_page)
