"""Raw source files as they arrive: a scraped consultation dump and a small ODIR-5K sheet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eyeops_testing.fundus import write_fundus

# Identifiers planted in the dialogues; none of them may survive an import.
PLANTED = ("李小明", "王医生", "北京同仁医院", "13812345678", "haodf.com", "Dr. Alan Grant", "grant@eye.org")
RAW_DIALOGUES = """\
id=1
https://www.haodf.com/wenda/zhangsan_g_123.htm

Doctor faculty
眼科

Description
疾病：白内障
病情描述：我叫李小明，左眼视力下降半年，在北京同仁医院查过，电话13812345678。
希望获得的帮助：需要手术吗？

Dialogue
病人：
王医生您好，我的情况需要手术吗？
医生：
你好，白内障影响生活时可以考虑手术，建议去医院复查视力和眼压。
病人：
谢谢王医生
医生：
不客气，资料见 https://example.com/cataract 。

id=2
https://www.haodf.com/wenda/x_g_456.htm

Doctor faculty
眼科

Description
疾病：青光眼

Dialogue
病人：眼睛胀痛，看灯有彩虹圈

id=3
https://www.example.org/consult/789

Doctor faculty
Ophthalmology

Description
Blurred vision in the right eye for two weeks.

Dialogue
Patient: Dr. Alan Grant told me it may be macular degeneration. Is that right?
Doctor: It is possible; an OCT scan of the macula will show it. Write to grant@eye.org for the results.
Patient: Thank you.

id=4
https://www.haodf.com/wenda/y_g_000.htm

Description
只有描述，没有对话。
"""


def write_raw_dialogues(path: Path) -> Path:
    """Four scraped records: two usable (Chinese, English), one without a doctor reply, one without
    a dialogue section."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RAW_DIALOGUES, encoding="utf-8")
    return path


def write_odir(root: Path, patients: int = 4, *, size: int = 96) -> Path:
    """An ODIR-5K csv with ``patients`` rows (glaucoma in every other left eye) and their JPEGs."""
    from eyeops.data.importers import odir

    rows = []
    for i in range(patients):
        pid, glaucoma = f"PT-{i}", i % 2
        write_fundus(root / f"{pid}_left.jpg", ["G"] if glaucoma else [], seed=2 * i, size=size)
        write_fundus(root / f"{pid}_right.jpg", seed=2 * i + 1, size=size)
        left = "glaucoma" if glaucoma else "normal fundus"
        rows.append((pid, 50 + i, "Female", f"{pid}_left.jpg", f"{pid}_right.jpg", left, "normal fundus"))
        rows[-1] += (1 - glaucoma, 0, glaucoma, 0, 0, 0, 0, 0)
    pd.DataFrame(rows, columns=list(odir.COLUMNS)).to_csv(root / "data.csv", index=False)
    return root / "data.csv"


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A minimal, valid PDF (Helvetica text, one line per entry) as journals' PDFs carry text."""

    def escape(line: str) -> str:
        return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]  # the page tree is filled in below
    font = 3 + 2 * len(pages)
    kids = []
    for lines in pages:
        text = " T* ".join(f"({escape(line)}) Tj" for line in lines)
        stream = f"BT /F1 11 Tf 14 TL 72 740 Td {text} ET".encode("latin-1")
        kids.append(f"{len(objects) + 1} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects) + 2} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode('latin-1')}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path
