"""A run's report: ``results.json`` and the table printed at its end."""

import json
import os


def write_results(path, results):
    """Writes ``results`` as JSON (atomically) and returns a printable table."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, path)
    columns = [("EER", "EER %"), ("minDCF_0.01", "minDCF"), ("actDCF_0.01", "actDCF"), ("Cllr", "Cllr"),
               ("minCllr", "minCllr"), ("sentence_error", "CER %"), ("chunk_error", "chunk err %")]
    columns = [c for c in columns if any(c[0] in v for v in results["systems"].values())]
    width = max([24] + [len(name) + 2 for name in results["systems"]])
    with_backend = any("backend" in v for v in results["systems"].values())
    header = f"{'system':<{width}}" + (f"{'back end':>13}" if with_backend else "")
    header += "".join(f"{title:>14}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for system, values in results["systems"].items():
        cells = f"{values.get('backend', '-'):>13}" if with_backend else ""
        for key, _ in columns:
            if key not in values:
                cells += f"{'-':>14}"
            elif key.startswith(("minDCF", "actDCF")) or key.endswith("Cllr"):
                cells += f"{values[key]:>14.4f}"
            else:
                cells += f"{100 * values[key]:>14.2f}"
        lines.append(f"{system:<{width}}" + cells)
    return "\n".join(lines)
