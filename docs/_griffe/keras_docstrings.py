"""Griffe extension: render Keras-style docstring examples with mkdocstrings.

Keras writes examples after a section title and a blank line, unindented:

    Example:

    >>> loss = NegLogLowerBound(mu=1.5)

Griffe's Google parser only knows indented sections, so the title would stay
plain text and each `>>>` line would become a nested Markdown block quote.
This extension rewrites every docstring before it is parsed: the title
becomes bold text and each run of doctest lines becomes a fenced `pycon`
block. Indented (Google-style) sections are left as they are.
"""

import re

import griffe

_TITLE = re.compile(r"^(Example|Examples):$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def keras_to_markdown(text):
    """The docstring `text` with its unindented examples made into Markdown."""
    lines = text.split("\n")
    out = []
    in_fence = in_doctest = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append("```")
            in_doctest = False
        if not in_doctest and _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or in_doctest:
            out.append(line)
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if _TITLE.match(line) and not following.strip():
            out.append(f"**{line}**")
        elif line.startswith(">>>"):
            out.extend(["```pycon", line])
            in_doctest = True
        else:
            out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class KerasDocstrings(griffe.Extension):
    """Applies `keras_to_markdown` to every docstring griffe loads."""

    def on_instance(self, *, node, obj, agent, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = keras_to_markdown(obj.docstring.value)
