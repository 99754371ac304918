"""The agent's calculator: exact arithmetic, and nothing else read (never eval)."""

import time

import pytest

from jielong.agent.calculator import MAX_BITS, CalcError, calculate


@pytest.mark.parametrize("expression, value", [
    ("(3 + 4) * 2 ** 10", "7168"),  # 7 · 1024
    ("7 / 2", "3.5"),
    ("7 // 2 + 7 % 2", "4"),
    ("-3 ** 2", "-9"),  # Python's precedence: -(3**2)
    ("2^10", "1024"),  # a caret read as a power
    ("１２３×４－１", "491"),  # full-width digits and ×, as Chinese input methods type them
    ("100 ÷ 8", "12.5"),
    ("sqrt(16) + abs(-2) + max(1, 5)", "11"),
    ("factorial(20)", "2432902008176640000"),
    ("round(pi, 4)", "3.1416"),
    ("2 ** 64", "18446744073709551616"),  # exact integers, not floats
])
def test_it_computes(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, says", [
    ("__import__('os').system('echo hi')", "not a calculator function"),
    ("().__class__.__bases__[0]", "not arithmetic"),
    ("(1).real", "not arithmetic"),
    ("open('x')", "not a calculator function"),
    ("x + 1", "unknown name"),
    ("'a' * 3", "only numbers"),
    ("[1, 2][0]", "not arithmetic"),
    ("lambda: 1", "not arithmetic"),
    ("sqrt(x=4)", "not a calculator function"),
    ("1 / 0", "division by zero"),
    ("10.0 ** 400", "too large"),
    ("2 +", "cannot read"),
])
def test_it_refuses_what_is_not_arithmetic(expression, says):
    with pytest.raises(CalcError, match=says):
        calculate(expression)


@pytest.mark.parametrize("expression", ["9 ** 9 ** 9", "2 ** 100000", "(2 ** 9000) * (2 ** 9000)",
                                        "factorial(100000)", "1" * 2000, "-" * 500 + "1"])
def test_huge_results_are_refused_before_they_are_computed(expression):
    start = time.perf_counter()
    with pytest.raises(CalcError):
        calculate(expression)
    assert time.perf_counter() - start < 0.5  # refused, not computed (9**9**9 takes minutes)


def test_the_bound_is_on_bits_not_on_the_exponent():
    assert len(calculate(f"2 ** {MAX_BITS - 1}")) == 3010  # 2^9999 has 3,010 digits
    with pytest.raises(CalcError):
        calculate(f"2 ** {MAX_BITS + 1}")
