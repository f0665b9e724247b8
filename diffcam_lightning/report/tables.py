"""A minimal table written as CSV, Markdown and LaTeX (no pandas/jinja needed)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "±": r"$\pm$", "<": r"$<$", "**": ""}


@dataclass
class Table:
    """One table of the report, written as CSV, Markdown and LaTeX.

    A cell in ``**bold**`` is bold in Markdown and LaTeX, plain in the CSV.

    Args:
        name: The file stem (``tables/<name>.{csv,md,tex}``).
        caption: The caption above (Markdown) or below (LaTeX) the table.
        columns: The column headers.
        rows: The rows, cells as text.

    Example:
        >>> table = Table("demo", "A demo", ["method", "score"], [["gradcam", "**0.5**"]])
        >>> print(table.to_markdown())
        **A demo**
        <BLANKLINE>
        | method | score |
        |---|---|
        | gradcam | **0.5** |
        <BLANKLINE>
        >>> [p.name for p in table.write(Path("tables"))]
        ['demo.csv', 'demo.md', 'demo.tex']
    """

    name: str
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"| {' | '.join(self.columns)} |", "|" + "---|" * len(self.columns)]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return f"**{self.caption}**\n\n" + "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        def esc(text: str) -> str:
            bold = text.startswith("**") and text.endswith("**")
            for raw, latex in _LATEX_ESCAPES.items():
                text = text.replace(raw, latex)
            return rf"\textbf{{{text}}}" if bold else text

        spec = "l" + "r" * (len(self.columns) - 1)
        body = [" & ".join(esc(c) for c in self.columns) + r" \\", r"\midrule"]
        body += [" & ".join(esc(c) for c in row) + r" \\" for row in self.rows]
        return "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\begin{{tabular}}{{{spec}}}",
                r"\toprule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                rf"\caption{{{esc(self.caption)}}}",
                r"\end{table}",
                "",
            ]
        )

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{self.name}.{ext}" for ext in ("csv", "md", "tex")]
        with open(paths[0], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows([[c.replace("**", "") for c in row] for row in self.rows])
        paths[1].write_text(self.to_markdown())
        paths[2].write_text(self.to_latex())
        return paths
