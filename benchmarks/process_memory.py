"""Peak memory of a process tree (a driver, its Ray services and trial workers), sampled."""

from __future__ import annotations

import threading

import psutil


def proportional_set_size(process: psutil.Process) -> tuple[int, int]:
    """(PSS, USS) in bytes. PSS shares every shared page among the processes that map it, so
    the PSS of a tree sums to what the tree really occupies (object-store pages count once);
    USS is what the process alone holds: what one more such process would add."""
    info = process.memory_full_info()
    return info.pss, info.uss


def object_store_rss(process: psutil.Process) -> int:
    """Bytes of Ray's object store (a shared-memory file named plasma…) resident in `process`."""
    try:
        maps = process.memory_maps(grouped=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0
    return sum(m.rss for m in maps if "plasma" in m.path)


class TreeMemory(threading.Thread):
    """Samples a process and all its descendants every `interval` seconds until stopped.

    Processes whose command line contains one of `trial_markers` (e.g. Ray's `ray::…Trainable`
    process titles) are trial workers, reported one by one as well as in the total."""

    def __init__(self, pid: int, trial_markers: tuple[str, ...], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.trial_markers = trial_markers
        self.interval = interval
        self.peak_total = 0
        self.peak_trial_pss = 0
        self.peak_trial_uss = 0
        self.peak_trial_store = 0  # object-store pages a trial maps: the data, read not copied
        self.most_trials = 0  # the most trial workers alive at one sample
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.is_set():
            self.sample()
            self._finished.wait(self.interval)

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total, trials = 0, 0
        for process in processes:
            try:
                pss, uss = proportional_set_size(process)
                title = " ".join(process.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited between listing and reading
            total += pss
            if any(marker in title for marker in self.trial_markers):
                trials += 1
                self.peak_trial_pss = max(self.peak_trial_pss, pss)
                self.peak_trial_uss = max(self.peak_trial_uss, uss)
                self.peak_trial_store = max(self.peak_trial_store, object_store_rss(process))
        self.peak_total = max(self.peak_total, total)
        self.most_trials = max(self.most_trials, trials)

    def stop(self) -> dict[str, float]:
        self._finished.set()
        self.join()
        mib = 2**20
        return {
            "peak_total_mib": round(self.peak_total / mib),
            "peak_trial_pss_mib": round(self.peak_trial_pss / mib),
            "peak_trial_uss_mib": round(self.peak_trial_uss / mib),
            "peak_trial_object_store_mib": round(self.peak_trial_store / mib),
            "most_concurrent_trials": self.most_trials,
        }
