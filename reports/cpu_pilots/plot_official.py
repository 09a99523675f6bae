"""Training loss and last-epoch test metrics of the official-split sgem_unet runs of protocols B
(the profile until 2026-12-04), O and L, side by side (O and L were not adopted: README.md beside this file),
of O's sgem_unet and unet runs (the ablation under O's settings, seed 0), and of O's sgem_unet
with seeds 0 and 1 (the spread of O's result), and of protocol S's four runs (the profile since
2026-12-04: sgem_unet and unet, seeds 0 and 1).

    PYTHONPATH=. python reports/cpu_pilots/plot_official.py
"""
import json
from sgem.plots import runs_comparison, save
load = lambda p: json.load(open(p))
runs = {"B (the profile), seed 0": load("reports/cpu_pilots/B_official/sgem_unet_s0_history.json"),
        "O: clipped in epochs 1-75, seed 0": load("reports/cpu_pilots/O_official/sgem_unet_s0_history.json"),
        "L: clipped throughout, 130 epochs, seed 0": load("reports/cpu_pilots/L_official/sgem_unet_s0_history.json")}
save(runs_comparison(runs, "sgem_unet on the NUDT-SIRST official split, cpu protocols B, O and L (O and L not adopted)"),
     "reports/cpu_pilots/O_official/B_O_L_sgem_unet_s0.png")
runs = {"sgem_unet, O, seed 0": runs["O: clipped in epochs 1-75, seed 0"],
        "unet, O, seed 0": load("reports/cpu_pilots/O_official/unet_s0_history.json")}
save(runs_comparison(runs, "Protocol O (not adopted) on the NUDT-SIRST official split: sgem_unet and unet, seed 0"),
     "reports/cpu_pilots/O_official/O_sgem_unet_unet_s0.png")
runs = {"sgem_unet, O, seed 0": runs["sgem_unet, O, seed 0"],
        "sgem_unet, O, seed 1": load("reports/cpu_pilots/O_official/sgem_unet_s1_history.json")}
save(runs_comparison(runs, "Protocol O (not adopted) on the NUDT-SIRST official split: sgem_unet, seeds 0 and 1"),
     "reports/cpu_pilots/O_official/O_sgem_unet_s0_s1.png")
# protocol S (the profile's since 2026-12-04): both models, both seeds
runs = {f"{m}, S, seed {s}": load(f"reports/cpu_pilots/S_official/{m}_s{s}_history.json")
        for m in ("sgem_unet", "unet") for s in (0, 1)}
save(runs_comparison(runs, "Protocol S (the cpu profile) on the NUDT-SIRST official split: sgem_unet and unet, seeds 0 and 1"),
     "reports/cpu_pilots/S_official/S_sgem_unet_unet.png")
