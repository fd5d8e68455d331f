"""A fake web-search provider behind the real interface: the one boundary the tests cannot reach."""

from __future__ import annotations

from recommender.websearch import Link


class FakeProvider:
    """Answers every query with two pages and two images, built from the query, instantly."""

    name = "fake"

    def fetch(self, query: str, *, kind: str, limit: int, timeout: float) -> list[Link]:
        slug = query.split()[0].lower()
        if kind == "image":
            return [
                Link(
                    title=f"{query} picture {i}",
                    url=f"https://pics.example.org/{slug}/{i}",
                    source="pics.example.org",
                    thumbnail=f"https://pics.example.org/{slug}/{i}.png",
                    kind="image",
                    image=f"https://pics.example.org/{slug}/{i}.png",
                )
                for i in range(2)
            ]
        return [
            Link(
                title=f"{query} fan page {i}",
                url=f"https://fans{i}.example.com/{slug}",
                source=f"fans{i}.example.com",
                thumbnail=None,
                kind=kind,
            )
            for i in range(2)
        ][:limit]
