"""Rules evaluate_adapter_lora, evaluate_adapter and evaluate_ggufs: several artifacts of one model in turn, PPL /
KLD / top-1 and gates for each (loraforge.measure.evaluate_in_turn). Input ``<key>_<n>[_<m>...]`` is the n-th (m-th,
...) artifact's ``<key>``; an input ``<key>`` without a number is every artifact's."""

from loraforge.measure import evaluate_in_turn
from loraforge.rule import run

if __name__ == "__main__":
    sm = snakemake  # noqa: F821 - injected by Snakemake
    p, w, i = sm.params, sm.wildcards, sm.input
    inputs = [{} for _ in p.each]
    for key, value in i.items():
        name, readers = key.split("_"), []
        while name[-1].isdigit():
            readers.insert(0, int(name.pop()))
        for n in readers or range(len(inputs)):
            inputs[n]["_".join(name)] = value if isinstance(value, str) else list(value)
    each = [
        {
            "out_json": out,
            "label": f"{w.model}/{one['artifact']}",
            "inputs": ins,
            **{k: v for k, v in one.items() if k != "artifact"},
        }
        for one, ins, out in zip(p.each, inputs, sm.output.metrics, strict=True)
    ]
    run(sm.log[0], evaluate_in_turn, threads=sm.threads, each=each, batch=p.batch, budget_mb=p.budget_mb)
