"""Where the project keeps things: one place for every path the code and the entry points use."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"  # shipped evaluation data (see data/ATTRIBUTION.md)
VAR_DIR = PROJECT_ROOT / "var"  # everything the pipeline writes: store, tables, reports
DEFAULT_REGISTRY = PROJECT_ROOT / "models.yaml"
DAGSTER_HOME = PROJECT_ROOT / "dagster_home"  # the project's own Dagster instance
STORE_DIR = VAR_DIR / "store"
TABLES_DIR = VAR_DIR / "tables"
REPORTS_DIR = VAR_DIR / "reports"
