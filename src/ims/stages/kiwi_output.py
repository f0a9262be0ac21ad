"""kiwi's console output made fit for a job log.

kiwi draws its progress bars on the terminal by rewriting one line: every update starts with a bare
carriage return (`\\rInstalling: [####    ] 40%`) and only a bar that reaches exactly 100 items ends with a
newline; the next `[ INFO ]` line may then follow the bar on the same line. In a log file that is one line
of thousands of redraws. `ProgressFilter` keeps what a terminal would finally show: each bar's last state,
on a line of its own.
"""

from __future__ import annotations

import re

# A bar's last state with the next log record glued to it: `...] 100%[ INFO    ]: 10:01:02 | ...`
_GLUED = re.compile(r"(\d+%)(\[ *[A-Z]+ *\]:)")
_COMPACT_AT = 64 * 1024


def final_state(line: str) -> str:
    """One line as a terminal shows it once written: the text after the last carriage return."""
    line = line.rstrip("\r")  # CRLF line ends
    if "\r" not in line:
        return line
    drawn = [segment for segment in line.split("\r") if segment]
    last = drawn[-1] if drawn else ""
    return _GLUED.sub(r"\1\n\2", last)


class ProgressFilter:
    """Feed it the output in chunks as they come; it returns whole lines, progress bars collapsed."""

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, text: str) -> str:
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        if len(self._partial) > _COMPACT_AT and "\r" in self._partial.rstrip("\r"):
            # A bar that has not ended yet: only its latest redraw can matter.
            body = self._partial.rstrip("\r")
            self._partial = body[body.rfind("\r") :] + self._partial[len(body) :]
        return "".join(final_state(line) + "\n" for line in lines)

    def flush(self) -> str:
        """What is left when the output ends (a line without its newline)."""
        rest, self._partial = self._partial, ""
        return final_state(rest) if rest else ""
