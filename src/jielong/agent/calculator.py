"""The agent's calculator: arithmetic read with Python's parser and evaluated by walking the
tree, never with `eval`.

    calculate("(3 + 4) * 2 ** 10")   # "7168"
    calculate("sqrt(2) / 2")          # "0.7071067811865476"
    calculate("１２３×４")             # "492" (full-width digits and × ÷, as people type them)

Only these are read: numbers, + - * / // % **, unary + and -, parentheses, the names pi, e and
tau, and the functions in FUNCTIONS. Anything else — a name, an attribute (`().__class__`),
a subscript, a string, a call of anything not in FUNCTIONS (`__import__('os')`) — is refused
with a `CalcError` naming what was found. Sizes are bounded before they are computed, so
an expression cannot hang the process: any integer result at most MAX_BITS bits (`9**9**9`
is refused, not computed), factorial up to 1000, at most MAX_CHARS characters and
MAX_DEPTH levels of nesting.
"""

from __future__ import annotations

import ast
import math
import operator
import unicodedata

MAX_CHARS = 1000
MAX_DEPTH = 50
MAX_BITS = 10_000  # an integer result of ~3,000 decimal digits

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n):
    if n != int(n) or not 0 <= n <= 1000:
        raise CalcError(f"factorial({n}): only whole numbers from 0 to 1000")
    return math.factorial(int(n))


FUNCTIONS = {"sqrt": math.sqrt, "log": math.log, "log10": math.log10, "log2": math.log2,
             "exp": math.exp, "sin": math.sin, "cos": math.cos, "tan": math.tan,
             "asin": math.asin, "acos": math.acos, "atan": math.atan, "abs": abs,
             "round": round, "floor": math.floor, "ceil": math.ceil, "min": min, "max": max,
             "factorial": _factorial}


class CalcError(ValueError):
    """An expression the calculator does not read, or cannot compute."""


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, as text (a whole float shown as an integer)."""
    value = evaluate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def evaluate(expression: str) -> int | float:
    """The value of `expression` (see the module docstring for what is read)."""
    if not isinstance(expression, str):
        raise CalcError(f"expected the expression as text, got {type(expression).__name__}")
    text = unicodedata.normalize("NFKC", expression).replace("×", "*").replace("÷", "/")
    text = text.replace("^", "**").strip()  # 2^10 means a power to everyone but Python
    if len(text) > MAX_CHARS:
        raise CalcError(f"the expression is {len(text)} characters; at most {MAX_CHARS}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise CalcError(f"cannot read {expression!r}: {e.msg}") from None
    try:
        return _value(tree.body, 0)
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("the result is too large for a floating-point number") from None
    except (ValueError, TypeError) as e:
        if isinstance(e, CalcError):
            raise
        raise CalcError(str(e)) from None


def _value(node: ast.AST, depth: int):
    if depth > MAX_DEPTH:
        raise CalcError(f"the expression nests more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Constant):
        if type(node.value) in (int, float):
            return node.value
        raise CalcError(f"only numbers are read, not {node.value!r}")
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _value(node.left, depth + 1), _value(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        value = BINARY[type(node.op)](left, right)
        if isinstance(value, int) and value.bit_length() > MAX_BITS:  # a long product
            raise CalcError(f"a result has more than {MAX_BITS} bits; too large")
        return value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_value(node.operand, depth + 1))
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in FUNCTIONS and not node.keywords:
        return FUNCTIONS[node.func.id](*(_value(a, depth + 1) for a in node.args))
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
        raise CalcError(f"{name}(…) is not a calculator function; use one of "
                        f"{', '.join(FUNCTIONS)}")
    if isinstance(node, ast.Name):
        raise CalcError(f"unknown name {node.id!r}; only {', '.join(CONSTANTS)} are known")
    raise CalcError(f"{type(node).__name__} ({ast.unparse(node)[:40]}) is not arithmetic")


def _check_power(base, exponent) -> None:
    """Refuse a power whose result would pass MAX_BITS bits, before computing it."""
    if abs(exponent) > 1e6 and abs(base) not in (0, 1):
        raise CalcError(f"the exponent {exponent} is too large")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if math.log2(abs(base) or 1) * exponent > MAX_BITS:
            raise CalcError(f"{base} ** {exponent} has more than {MAX_BITS} bits; too large")
