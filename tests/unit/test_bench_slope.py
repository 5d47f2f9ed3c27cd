from bench.orch_runs import _slope


def test_the_memory_slope_starts_once_the_worker_warmed_up() -> None:
    samples = [(0.0, 0, 100.0), (1.0, 10, 101.0), (2.0, 50, 101.5), (3.0, 110, 102.0)]
    assert _slope(samples, 10) == (102.0 - 101.0) * 1024 / 0.1


def test_a_plan_that_ends_before_any_sample_falls_in_between_is_measured_from_the_start() -> None:
    assert _slope([(0.0, 0, 100.0), (1.5, 100, 101.0)], 10) == 1.0 * 1024 / 0.1
    # the plan was already done at the first sample: that sample cannot start the slope
    assert _slope([(0.0, 0, 100.0), (0.5, 100, 100.5), (1.5, 100, 101.0)], 10) == 1.0 * 1024 / 0.1
