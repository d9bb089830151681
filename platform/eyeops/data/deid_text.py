"""De-identification of free text (scraped dialogues): names, hospitals, URLs, e-mails, phones, ids.

Rule-based, Chinese and English, tuned to consultation sites' text (MedDialog-style scrapes):
- ``url`` / ``email``: any http(s)/www link or bare domain path; e-mail addresses;
- ``phone``: mainland mobiles (1[3-9] + 9 digits), landlines with area code, ``+``-prefixed and
  North-American numbers; ``id``: 18-digit resident identity numbers;
- ``hospital``: Chinese names ending in 医院 / 卫生院 / 诊所 / 医疗中心 / 眼科中心 that carry a place or
  institution word (省, 市, 人民, 附属, 第一 …, so "去医院" stays), English "… Hospital / Clinic /
  Medical Center / Eye Institute / Infirmary";
- ``name``: a common Chinese surname (+ up to two characters) right before a title (医生, 大夫,
  主任, 教授, 院长, 护士, 老师), after 我叫 / 姓名:, and English Dr./Mr./Mrs./Ms./Prof. +
  capitalised words or "my name is …".
Each match becomes ``[KIND]``; :func:`mask` returns the counts per kind for the manifest. Rules miss
what they do not describe (a bare name without a title): the manifest says so, and a reviewer should
sample the output before the data leaves the hospital.
"""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["KINDS", "mask"]

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_TITLES = "医生|大夫|主任|教授|院长|护士|老师"
_PLACE = (
    r"(?:省|市|区|县|州|镇|大学|学院|人民|附属|第[一二三四五六七八九十\d]+|中医|中西医|协和|同仁|中山"
    r"|华西|湘雅|儿童|妇幼|军区|解放军|爱尔|眼耳鼻喉)"
)
_HAN = r"[\u4e00-\u9fff]"
_NOT_NAME_CHARS = r"[^\s，。、；：！？,.;:!?()（）\[\]去到在的了和与及或是我你他她您想要看做查]"
# (kind, pattern); order matters: URLs before phones (digits in links).
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    (
        "url",
        re.compile(
            r"(?:https?://|www\.)[^\s，。；）)\]]+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|cn|net|org)(?:/[^\s，。；）)\]]*)?",
            re.I,
        ),
    ),
    ("id", re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")),
    (
        "phone",
        re.compile(
            r"\+\d{1,3}(?:[\s-]\d{1,4}){2,4}(?!\d)"
            r"|(?<![\d+])(?:1[3-9]\d{9}|0\d{2,3}-?\d{7,8}|\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4})(?!\d)"
        ),
    ),
    (
        "hospital",
        re.compile(
            rf"{_NOT_NAME_CHARS}{{0,8}}{_PLACE}{_HAN}{{0,8}}?(?:医院|卫生院|诊所|医疗中心|眼科中心)"
            r"|(?:[A-Z][\w'&.-]*\s+){1,5}(?:Hospital|Clinic|Medical Center|Eye Institute|Infirmary)\b"
        ),
    ),
    (
        "name",
        re.compile(
            rf"(?<=我叫){_HAN}{{2,3}}|(?<=姓名[:：])\s*{_HAN}{{2,4}}"
            r"|\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?"
            r"|(?<=[Mm]y name is )[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?"
        ),
    ),
)
KINDS = tuple(kind for kind, _ in _RULES)


_TITLE = re.compile(rf"(?:{_TITLES})")
_HAN_CHAR = re.compile(_HAN)


def _titled_names(text: str) -> tuple[str, int]:
    """A surname (+ up to two characters) right before a title: the shortest such span is the name
    ("谢谢王医生" masks 王, not 谢谢王 — 谢 is a surname too)."""
    out, last, n = [], 0, 0
    for title in _TITLE.finditer(text):
        end = title.start()
        for k in (1, 2, 3):
            start = end - k
            name = text[max(start, 0) : end]
            if start < last or not _HAN_CHAR.fullmatch(name[-1:] or "x"):
                break
            if name[0] in _SURNAMES and all(_HAN_CHAR.fullmatch(c) for c in name):
                out.append(text[last:start] + "[NAME]")
                last, n = end, n + 1
                break
    return "".join(out) + text[last:], n


def mask(text: str) -> tuple[str, Counter[str]]:
    """``text`` with identifiers replaced by ``[KIND]``, and how many of each kind were masked."""
    counts: Counter[str] = Counter()
    for kind, pattern in _RULES:
        text, n = pattern.subn(f"[{kind.upper()}]", text)
        if n:
            counts[kind] += n
    text, n = _titled_names(text)
    if n:
        counts["name"] += n
    return text, counts
