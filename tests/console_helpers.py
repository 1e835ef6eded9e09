"""What the console tests share: people in a users file, signing in over real HTTP."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from receiver.console.users import Role, new_token, users_file_line


@dataclass(frozen=True)
class Person:
    name: str
    role: Role
    token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def write_users(path: Path, *people: tuple[str, Role]) -> dict[str, Person]:
    """A users file with a fresh token for each person; returns them by name."""
    made = {name: Person(name, role, new_token()) for name, role in people}
    lines = [users_file_line(p.name, p.role, p.token) for p in made.values()]
    path.write_text("# console users (test)\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return made


def sign_in(client: httpx.Client, person: Person) -> str:
    """Sign ``client`` in with the form; returns the page's CSRF token."""
    response = client.post("/sign-in", data={"token": person.token, "next": "/"})
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None, "the page carries a CSRF token"
    return match.group(1)
