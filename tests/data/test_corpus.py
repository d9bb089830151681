"""The Ophtimus-style corpus pipeline: PDF / HTML / text → clean, filtered, deduplicated, packed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from eyeops_testing.raw_data import write_pdf

from eyeops.data import load_samples, prepare, read_manifest
from eyeops.data.corpus import dedup, pack
from eyeops.data.llm_engine import GENERATE_SYSTEM, VERIFY_SYSTEM
from eyeops.data.schema import Task
from eyeops.recipes import DataSpec

HEADER = "Ophthalmology Review 2026"
DR = (
    "Diabetic retinopathy is damage to the small vessels of the retina caused by years of high blood "
    "sugar. Early disease shows microaneurysms and dot haemorrhages; later, hard exudates gather near "
    "the macula and cotton wool spots mark ischaemic nerve fibres. Proliferative disease grows fragile "
    "new vessels that bleed into the vitreous and can pull the retina away. Screening with fundus "
    "photographs every year finds disease before vision falls, and laser or anti-VEGF injections treat "
    "macular oedema and new vessels. Good control of glucose and blood pressure slows every stage."
)
REFERENCES = " ".join(f"[{i}] 20{i:02d};{i}({i}):{i}-{i + 9}." for i in range(1, 31))
GLAUCOMA = [
    "Glaucoma is a group of optic neuropathies in which retinal ganglion cells die and the optic cup",
    "enlarges. Raised intra-",
    "ocular pressure is the main modifiable risk factor, but damage also occurs at normal pressure.",
    "Visual field loss begins in the mid periphery and spreads, so patients notice it late.",
]
GLAUCOMA_2 = [
    "Treatment lowers the pressure with prostaglandin drops, laser trabeculoplasty or surgery, and",
    "progress is followed with visual fields and optical coherence tomography of the nerve fibre layer.",
    "Angle closure glaucoma can present acutely with pain, halos and a red eye and needs urgent care.",
]


def _corpus(root):
    write_pdf(
        root / "review.pdf",
        [
            [HEADER, *GLAUCOMA, "1"],
            [HEADER, *GLAUCOMA_2, "2"],
            [HEADER, "Key points are summarised above.", "3"],
        ],
    )
    (root / "atlas.html").write_text(
        "<html><head><script>var tracker = 1;</script></head><body><nav>Home | About | Login</nav>"
        f"<h1>Diabetic retinopathy</h1><p>{DR}</p>"
        f"<p>{REFERENCES}</p>"
        "<footer>© 2026 Atlas Inc</footer></body></html>",
        encoding="utf-8",
    )
    (root / "notes.txt").write_text(DR.replace("every year", "each year") + "\n", encoding="utf-8")
    (root / "stub.txt").write_text("Figure 2.\n", encoding="utf-8")
    (root / "spam.txt").write_text("buy eye drops now " * 20, encoding="utf-8")
    return root


def test_corpus_to_clean_packed_pretraining_text(tmp_path):
    spec = DataSpec(
        source="corpus",
        path=str(_corpus(tmp_path / "corpus")),
        tasks=[Task.PRETRAIN_TEXT, Task.MCQ],
        corpus={"passage_words": 150},
        val_fraction=0.0,
        test_fraction=0.0,
    )
    ref = prepare(spec, str(tmp_path / "out"), name="corpus")
    manifest = read_manifest(ref.uri)
    assert manifest.filtered_counts == {
        "too short": 1,
        "too few letters (table, references or symbols)": 1,
        "repetitive": 1,
        "near-duplicate passage": 1,
    }
    assert "only pretraining text" in manifest.import_notes["corpus_qa"]  # MCQs need the LLM engine
    docs = {s.answer.split()[0]: s for s in load_samples(ref.uri)}
    assert sorted(docs) == ["Diabetic", "Glaucoma"] and {s.task for s in docs.values()} == {
        Task.PRETRAIN_TEXT
    }
    glaucoma = docs["Glaucoma"].answer
    assert "intraocular pressure" in glaucoma and "Key points are summarised above." in glaucoma
    assert HEADER not in glaucoma and " 2 " not in glaucoma  # running header and page numbers gone
    assert "tracker" not in docs["Diabetic"].answer and "Login" not in docs["Diabetic"].answer
    assert "each year" not in docs["Diabetic"].answer  # the notes' near-copy was dropped


def test_dedup_and_packing():
    text = " ".join(f"word{i}" for i in range(60))
    drops = dedup([text, text.upper(), text.replace("word30", "other"), "something else entirely " * 5], 0.8)
    assert drops == [(1, "exact duplicate passage"), (2, "near-duplicate passage")]
    assert pack(["a b", "c d e", "f"], 4) == ["a b", "c d e\n\nf"]


def test_llm_family_corpus_entries_read_pdf_and_html_through_the_pipeline(tmp_path):
    from eyeops.models.llm.data import read_corpus

    docs = read_corpus(str(_corpus(tmp_path)))  # model.corpus: a directory of papers and pages
    assert sorted(d.split()[0] for d in docs) == ["Diabetic", "Glaucoma"] and all(
        HEADER not in d for d in docs
    )


class _Endpoint(BaseHTTPRequestHandler):
    """A stand-in for an external OpenAI-compatible service: canned replies by prompt, and one 500
    first so the client's retry is exercised."""

    requests: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        system, user = (m["content"] for m in body["messages"])
        type(self).requests.append(user)
        if len(self.requests) == 1:
            self.send_response(500)
            self.end_headers()
            return
        if system == VERIFY_SYSTEM:
            reply = "UNSUPPORTED" if "OCT" in user else "SUPPORTED."
        elif system == GENERATE_SYSTEM:
            reply = "```json\n" + json.dumps({"items": PASSAGE_ITEMS}) + "\n```"
        else:
            reply = "Glaucoma is optic nerve damage, treated by lowering the pressure."
        message = {"role": "assistant", "content": reply}
        payload = {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


PASSAGE_ITEMS = [
    {
        "task": "mcq",
        "question": "Which drugs usually lower eye pressure first?",
        "options": ["Prostaglandin analogues", "Antibiotics", "Steroids", "Antihistamines"],
        "answer": "A",
    },
    {"task": "essay", "question": "How is progress followed?", "answer": "With visual fields and OCT."},
    {"task": "essay", "question": "Are prostaglandin drops used?", "answer": "prostaglandin drops"},
]


def test_corpus_summaries_mcq_and_essays_through_an_llm_endpoint(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "glaucoma.txt").write_text(
            " ".join([*GLAUCOMA, *GLAUCOMA_2]), encoding="utf-8"
        )
        endpoint = {"base_url": f"http://127.0.0.1:{server.server_port}/v1", "model": "m", "max_retries": 1}
        spec = DataSpec(
            source="corpus",
            path=str(tmp_path / "corpus"),
            tasks=[Task.PRETRAIN_TEXT, Task.MCQ, Task.TEXT_QA],
            corpus={"summarize": True},
            engine={"kind": "llm", "llm": endpoint, "cache_dir": str(tmp_path / "cache")},
            val_fraction=0.0,
            test_fraction=0.0,
        )
        ref = prepare(spec, str(tmp_path / "out"), name="qa")
    finally:
        server.shutdown()
    generation = read_manifest(ref.uri).generation
    assert generation["counts"]["generated"] == 3 and generation["counts"]["verified"] == 1
    assert generation["rejected_by_reason"] == {"answer leaked into question": 1, "verifier UNSUPPORTED": 1}
    # summary (map of one passage) + generation + 2 verifications; the 500 was retried by the client
    assert generation["calls"]["calls"] == 4 and len(_Endpoint.requests) == 5
    by_kind = {s.meta.get("kind", str(s.task)): s for s in load_samples(ref.uri)}
    assert set(by_kind) == {"packed", "summary", "mcq"}
    mcq = by_kind["mcq"]
    assert mcq.answer == "A" and mcq.options[0] == "Prostaglandin analogues"
    assert mcq.messages[0].content.endswith("D. Antihistamines\nAnswer with the letter.")
    assert by_kind["summary"].answer.startswith("Glaucoma is optic nerve damage")
