"""Writes mmlu/: one task per MMLU subject and the four category groups, as lm-eval's
tasks/mmlu/default does (its _generate_configs.py), over the local csv files.

Run from this folder after changing the template: python _generate_mmlu.py
"""

from pathlib import Path

# MMLU's 57 subjects and the category lm-eval groups each under (Hendrycks et al., 2021).
CATEGORIES = {
    "stem": [
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics",
        "high_school_biology", "high_school_chemistry", "high_school_computer_science",
        "high_school_mathematics", "high_school_physics", "high_school_statistics",
        "machine_learning",
    ],
    "other": [
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
        "professional_accounting", "professional_medicine", "virology",
    ],
    "social_sciences": [
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
        "sociology", "us_foreign_policy",
    ],
    "humanities": [
        "formal_logic", "high_school_european_history", "high_school_us_history",
        "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
        "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
        "world_religions",
    ],
}

SUBJECT = """\
task: mmlu_local_{subject}
task_alias: {alias}
tag: mmlu_local_{category}_tasks
include: _template_yaml
dataset_name: {subject}
dataset_kwargs:
  subject: {subject}
description: "The following are multiple choice questions (with answers) about {alias}.\\n\\n"
"""

CATEGORY = """\
group: mmlu_local_{category}
group_alias: {alias}
task:
  - mmlu_local_{category}_tasks
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 2
"""


def main() -> None:
    out = Path(__file__).parent / "mmlu"
    for category, subjects in CATEGORIES.items():
        (out / f"_mmlu_local_{category}.yaml").write_text(
            CATEGORY.format(category=category, alias=category.replace("_", " "))
        )
        for subject in subjects:
            (out / f"mmlu_local_{subject}.yaml").write_text(
                SUBJECT.format(subject=subject, alias=subject.replace("_", " "), category=category)
            )


if __name__ == "__main__":
    main()
