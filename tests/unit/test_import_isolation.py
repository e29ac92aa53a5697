"""`import prefixrl` and every method module must work with megatron and vllm unimportable."""

import subprocess
import sys
import textwrap

MODULES = [
    "advantages", "batching", "data", "evaluation", "flops", "hard", "losses", "prefixes", "protocols", "records",
    "rewards", "shards", "sourcer", "cli", "config", "settings", "demo", "pipeline", "runlog", "session", "stages", "train",
]


def test_prefixrl_imports_without_megatron_or_vllm():
    code = textwrap.dedent(
        f"""
        import importlib, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("megatron", "vllm"):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        try:
            import megatron.core
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker does not work")
        import prefixrl
        for name in {MODULES!r}:
            importlib.import_module("prefixrl." + name)
        leaked = [m for m in sys.modules if m.split(".")[0] in ("megatron", "vllm")]
        assert not leaked, leaked
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
