"""Verdicts on the post's claims (REFERENCE 1) as data: which claim, whether it holds
here, why, and the numbers behind it; and the evidence a verdict needs."""

import dataclasses
from collections.abc import Mapping

from batchlab import analysis, record

HOLDS = "holds"
CAVEAT = "holds with a caveat"
FAILS = "does not hold here"
NOT_ENOUGH = "not enough evidence"
UNTESTABLE = "cannot be tested on this device"
NOT_MEASURED = "not measured in these results"
NOT_JUDGED = "not judged"  # a judge failed on these records
STATUSES = (HOLDS, CAVEAT, FAILS, NOT_ENOUGH, UNTESTABLE, NOT_MEASURED, NOT_JUDGED)
TESTED = (HOLDS, CAVEAT, FAILS)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One claim judged on one series (or on a whole device when `subject` is empty)."""

    claim: str  # "C1".."C9"
    status: str  # one of STATUSES
    summary: str  # the reason, one line, with the key numbers in words
    subject: str = ""  # the series or setup judged, e.g. "mlp depth=8 width=1024 float32"
    numbers: Mapping[str, float | int | str | None] = dataclasses.field(default_factory=dict)
    lines: tuple[str, ...] = ()  # what a sweep prints for it, when more than `line`
    caveats: tuple[str, ...] = ()  # why a claim that holds holds only with a caveat

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"{self.claim}: unknown verdict status {self.status!r}")

    @property
    def text(self) -> str:
        """The summary and its caveats, one line."""
        return self.summary + "".join(f"; caveat: {c}" for c in self.caveats)

    @property
    def line(self) -> str:
        """The verdict as one printed line."""
        subject = f" {self.subject}" if self.subject else ""
        return f"{self.claim}{subject}: {self.text}. {self.claim} {self.status}."


def judged(
    claim: str,
    holds: bool,
    summary: str,
    caveats=(),
    subject: str = "",
    numbers: Mapping | None = None,
    lines=(),
) -> Verdict:
    """A tested claim: FAILS unless it holds; HOLDS or, with caveats, CAVEAT. A claim
    that does not hold keeps its caveats as context."""
    status = (CAVEAT if caveats else HOLDS) if holds else FAILS
    return Verdict(
        claim, status, summary, subject, dict(numbers or {}), tuple(lines), tuple(caveats)
    )


def measured_or_predicted(points: list[dict]) -> str:
    """The word for where the times came from: "measured" or "predicted"."""
    return "predicted" if points and record.is_predicted(points[0]) else "measured"


def evidence(
    claim: str, subject: str, points: list[dict], needed: int, axis: str = "batch"
) -> tuple[list[dict], Verdict | None, list[str]]:
    """The points a verdict may rest on: (usable points, a NOT_ENOUGH verdict when fewer
    than `needed` are usable, caveats naming what was left out).

    A point is usable when the 95% interval of its median is within ±10%
    (analysis.MAX_MEDIAN_ERROR): points a run could not time to that precision do not
    decide a verdict.
    """
    good, noisy = analysis.usable(points)
    if len(good) < needed:
        why = (
            f"{len(good)} of {len(points)} points have their median known within "
            f"±{100 * analysis.MAX_MEDIAN_ERROR:.0f}%; the verdict needs {needed}"
        )
        return good, Verdict(claim, NOT_ENOUGH, why, subject), []
    caveats = []
    if noisy:
        name = {"batch": "b", "context": "T"}.get(axis, axis)
        left = ", ".join(f"{name}={record.x_value(r, axis)}" for r in noisy[:4])
        left += " ..." if len(noisy) > 4 else ""
        caveats.append(
            f"{len(noisy)} of {len(points)} points left out ({left}): their median is not "
            f"known within ±{100 * analysis.MAX_MEDIAN_ERROR:.0f}%"
        )
    return good, None, caveats


def common_words(subjects) -> str:
    """The words every subject has, in the order of the first."""
    subjects = list(subjects)
    if not subjects:
        return ""
    common = set.intersection(*(set(s.split()) for s in subjects))
    return " ".join(w for w in subjects[0].split() if w in common)


def short_subjects(subjects) -> dict[str, str]:
    """Each subject without the words every subject shares ("layers=1 float32"), so that
    a table of series reads as what differs between them."""
    subjects = list(dict.fromkeys(subjects))
    if len(subjects) < 2:
        return {s: s for s in subjects}
    common = set(common_words(subjects).split())
    short = {s: " ".join(w for w in s.split() if w not in common) for s in subjects}
    return {s: short[s] or s for s in subjects}


def combine(claim: str, parts: list[Verdict], max_caveats: int = 3) -> Verdict:
    """One verdict for a device from the verdicts of its series.

    Among tested series: all hold -> HOLDS; all hold, some with caveats -> CAVEAT; some
    hold and some not -> CAVEAT when at least half hold, else FAILS (the summary says
    which); none hold -> FAILS. With no tested series: the first of NOT_ENOUGH,
    UNTESTABLE, NOT_JUDGED, NOT_MEASURED among the parts. Caveats are gathered, the
    first few kept; series without enough evidence are named in a caveat.
    """
    tested = [v for v in parts if v.status in TESTED]
    if not tested:
        for s in (NOT_ENOUGH, UNTESTABLE, NOT_JUDGED, NOT_MEASURED):
            same = [v for v in parts if v.status == s]
            if same:
                return dataclasses.replace(same[0], subject="", lines=())
        return Verdict(claim, NOT_MEASURED, "no results for this claim")
    thin = [v for v in parts if v.status == NOT_ENOUGH]
    if len(tested) == 1 and not thin:
        return dataclasses.replace(tested[0], subject="", lines=())
    good = [v for v in tested if v.status != FAILS]
    bad = [v for v in tested if v.status == FAILS]
    name = short_subjects(v.subject for v in parts)
    caveats = [f"{name[v.subject]}: {c}" for v in good for c in v.caveats]
    if len(caveats) > max_caveats:
        caveats = caveats[:max_caveats] + [f"{len(caveats) - max_caveats} more"]
    if thin:
        names = ", ".join(name[v.subject] for v in thin)
        caveats.append(f"not enough evidence for {len(thin)} series ({names})")
    if not bad:
        status = CAVEAT if caveats else HOLDS
        summary = (
            f"holds for all {len(tested)} series judged; e.g. {name[tested[0].subject]}: "
            f"{tested[0].summary}"
        )
    else:
        status = FAILS if not good or len(good) < len(bad) else CAVEAT
        summary = (
            f"holds for {len(good)} of {len(tested)} series; not for "
            + ", ".join(name[v.subject] for v in bad)
            + f" ({bad[0].summary})"
        )
    numbers = {"series": len(tested), "series_holding": len(good)}
    return Verdict(claim, status, summary, "", numbers, (), tuple(caveats))
