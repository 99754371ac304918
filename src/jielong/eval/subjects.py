"""Subject tables of the four published multiple-choice benchmarks: each subject's name as
its prompt says it, and the categories its results are grouped under.

Facts, not code, from these sources:
- CMMLU: Chinese names as in lm-evaluation-harness `lm_eval/tasks/cmmlu/cmmlu_*.yaml`
  descriptions; categories from CMMLU's `src/categories.py` (haonan-li/CMMLU), where a
  subject may sit in two (e.g. ancient_chinese: Social Science and China specific).
  Codes: S STEM, H Humanities, So Social Science, O Other, C China specific.
- MMLU: the group each subject's lm-eval task is tagged with (`lm_eval/tasks/mmlu/default`);
  its prompt names the subject in English, underscores as spaces.
- C-Eval: Chinese names as in lm-eval's `ceval-valid_*.yaml`; categories from C-Eval's
  `subject_mapping.json` (hkust-nlp/ceval).
- TMMLU+: names and groups as in lm-eval's `lm_eval/tasks/tmmluplus/default/*.yaml`.
"""

from __future__ import annotations

# subject|中文名|category codes
_CMMLU = """\
agronomy|农学|O
anatomy|解剖学|S
ancient_chinese|古汉语|So,C
arts|艺术学|H
astronomy|天文学|S
business_ethics|商业伦理|So
chinese_civil_service_exam|中国公务员考试|So,C
chinese_driving_rule|中国驾驶规则|O,C
chinese_food_culture|中国饮食文化|So,C
chinese_foreign_policy|中国外交政策|So,C
chinese_history|中国历史|H,C
chinese_literature|中国文学|H,C
chinese_teacher_qualification|中国教师资格|So,C
clinical_knowledge|临床知识|O
college_actuarial_science|大学精算学|S
college_education|大学教育学|So
college_engineering_hydrology|大学工程水文学|S
college_law|大学法律|H
college_mathematics|大学数学|S
college_medical_statistics|大学医学统计|S
college_medicine|大学医学|O
computer_science|计算机科学|S
computer_security|计算机安全|O
conceptual_physics|概念物理学|S
construction_project_management|建设工程管理|O,C
economics|经济学|So
education|教育学|So
electrical_engineering|电气工程|S
elementary_chinese|小学语文|So,C
elementary_commonsense|小学常识|O,C
elementary_information_and_technology|小学信息技术|O
elementary_mathematics|初等数学|S
ethnology|民族学|So,C
food_science|食品科学|O
genetics|遗传学|S
global_facts|全球事实|H
high_school_biology|高中生物|S
high_school_chemistry|高中化学|S
high_school_geography|高中地理|So
high_school_mathematics|高中数学|S
high_school_physics|高中物理学|S
high_school_politics|高中政治|So,C
human_sexuality|人类性行为|O
international_law|国际法学|H
journalism|新闻学|So
jurisprudence|法理学|H
legal_and_moral_basis|法律与道德基础|O
logical|逻辑学|H
machine_learning|机器学习|S
management|管理学|So
marketing|市场营销|So
marxist_theory|马克思主义理论|H
modern_chinese|现代汉语|So,C
nutrition|营养学|O
philosophy|哲学|H
professional_accounting|专业会计|So
professional_law|专业法学|H
professional_medicine|专业医学|O
professional_psychology|专业心理学|So
public_relations|公共关系|So
security_study|安全研究|So
sociology|社会学|So
sports_science|体育学|O
traditional_chinese_medicine|中医中药|O,C
virology|病毒学|S
world_history|世界历史|H
world_religions|世界宗教|H
"""


# subject|group
_MMLU = """\
abstract_algebra|stem
anatomy|stem
astronomy|stem
business_ethics|other
clinical_knowledge|other
college_biology|stem
college_chemistry|stem
college_computer_science|stem
college_mathematics|stem
college_medicine|other
college_physics|stem
computer_security|stem
conceptual_physics|stem
econometrics|social_sciences
electrical_engineering|stem
elementary_mathematics|stem
formal_logic|humanities
global_facts|other
high_school_biology|stem
high_school_chemistry|stem
high_school_computer_science|stem
high_school_european_history|humanities
high_school_geography|social_sciences
high_school_government_and_politics|social_sciences
high_school_macroeconomics|social_sciences
high_school_mathematics|stem
high_school_microeconomics|social_sciences
high_school_physics|stem
high_school_psychology|social_sciences
high_school_statistics|stem
high_school_us_history|humanities
high_school_world_history|humanities
human_aging|other
human_sexuality|social_sciences
international_law|humanities
jurisprudence|humanities
logical_fallacies|humanities
machine_learning|stem
management|other
marketing|other
medical_genetics|other
miscellaneous|other
moral_disputes|humanities
moral_scenarios|humanities
nutrition|other
philosophy|humanities
prehistory|humanities
professional_accounting|other
professional_law|humanities
professional_medicine|other
professional_psychology|social_sciences
public_relations|social_sciences
security_studies|social_sciences
sociology|social_sciences
us_foreign_policy|social_sciences
virology|other
world_religions|humanities
"""


# subject|中文名|category
_CEVAL = """\
computer_network|计算机网络|STEM
operating_system|操作系统|STEM
computer_architecture|计算机组成|STEM
college_programming|大学编程|STEM
college_physics|大学物理|STEM
college_chemistry|大学化学|STEM
advanced_mathematics|高等数学|STEM
probability_and_statistics|概率统计|STEM
discrete_mathematics|离散数学|STEM
electrical_engineer|注册电气工程师|STEM
metrology_engineer|注册计量师|STEM
high_school_mathematics|高中数学|STEM
high_school_physics|高中物理|STEM
high_school_chemistry|高中化学|STEM
high_school_biology|高中生物|STEM
middle_school_mathematics|初中数学|STEM
middle_school_biology|初中生物|STEM
middle_school_physics|初中物理|STEM
middle_school_chemistry|初中化学|STEM
veterinary_medicine|兽医学|STEM
college_economics|大学经济学|Social_Science
business_administration|工商管理|Social_Science
marxism|马克思主义基本原理|Social_Science
mao_zedong_thought|毛泽东思想和中国特色社会主义理论体系概论|Social_Science
education_science|教育学|Social_Science
teacher_qualification|教师资格|Social_Science
high_school_politics|高中政治|Social_Science
high_school_geography|高中地理|Social_Science
middle_school_politics|初中政治|Social_Science
middle_school_geography|初中地理|Social_Science
modern_chinese_history|近代史纲要|Humanities
ideological_and_moral_cultivation|思想道德修养与法律基础|Humanities
logic|逻辑学|Humanities
law|法学|Humanities
chinese_language_and_literature|中国语言文学|Humanities
art_studies|艺术学|Humanities
professional_tour_guide|导游资格|Humanities
legal_professional|法律职业资格|Humanities
high_school_chinese|高中语文|Humanities
high_school_history|高中历史|Humanities
middle_school_history|初中历史|Humanities
civil_servant|公务员|Other
sports_science|体育学|Other
plant_protection|植物保护|Other
basic_medicine|基础医学|Other
clinical_medicine|临床医学|Other
urban_and_rural_planner|注册城乡规划师|Other
accountant|注册会计师|Other
fire_engineer|注册消防工程师|Other
environmental_impact_assessment_engineer|环境影响评价工程师|Other
tax_accountant|税务师|Other
physician|医师资格|Other
"""


# subject|中文名|group
_TMMLU = """\
accounting|會計學|other
administrative_law|行政法|humanities
advance_chemistry|化學|STEM
agriculture|農業|other
anti_money_laundering|洗錢防制|humanities
auditing|審計學|other
basic_medical_science|基礎醫學|STEM
business_management|企業管理|other
chinese_language_and_literature|國文|social_sciences
clinical_psychology|臨床心理學|social_sciences
computer_science|資訊工程|STEM
culinary_skills|餐旅|other
dentistry|牙醫學|other
economics|經濟學|social_sciences
education|教育常識|social_sciences
education_(profession_level)|教育專業|social_sciences
educational_psychology|教育心理|social_sciences
engineering_math|工程數學|STEM
finance_banking|金融與法規|other
financial_analysis|財務分析|other
fire_science|火災學|other
general_principles_of_law|法學大意|humanities
geography_of_taiwan|台灣地理|social_sciences
human_behavior|人類行為與社會|social_sciences
insurance_studies|保險學|other
introduction_to_law|法律概論|humanities
jce_humanities|指考人文科目|humanities
junior_chemistry|國中理化|STEM
junior_chinese_exam|國中會考基測國文|social_sciences
junior_math_exam|國中會考基測數學科|STEM
junior_science_exam|國中會考基測自然科|STEM
junior_social_studies|國中會考基測社會科|other
None|線代|STEM
logic_reasoning|邏輯思維|other
macroeconomics|總經|social_sciences
management_accounting|管理會計|other
marketing_management|行銷管理|other
mechanical|機械與機電概論|other
music|音樂科|other
national_protection|軍事|social_sciences
nautical_science|航海|other
occupational_therapy_for_psychological_disorders|心理障礙職能治療學|social_sciences
official_document_management|機關文書|other
optometry|視光學|other
organic_chemistry|有機化學|STEM
pharmacology|藥理學|other
pharmacy|藥劑學|STEM
physical_education|體育|social_sciences
physics|物理|STEM
politic_science|政治|social_sciences
real_estate|房地產|other
secondary_physics|高中物理|STEM
statistics_and_machine_learning|統計與機器學習|STEM
taiwanese_hokkien|閩南語|social_sciences
taxation|稅務|humanities
technical|技術工相關|other
three_principles_of_people|三民主義|social_sciences
trade|貿易|other
traditional_chinese_medicine_clinical_medicine|中醫臨床醫學|other
trust_practice|信託實務|humanities
ttqav2|台灣在地用語|social_sciences
tve_chinese_language|統測國文|social_sciences
tve_design|統測 設計|other
tve_mathematics|統測數學|STEM
tve_natural_sciences|統測自然科|STEM
veterinary_pathology|獸醫病理學|other
veterinary_pharmacology|獸醫藥理學|other
"""


_CMMLU_CODES = {"S": "STEM", "H": "Humanities", "So": "Social Science", "O": "Other",
                "C": "China specific"}
_MMLU_GROUPS = {"stem": "STEM", "STEM": "STEM", "humanities": "humanities",
                "social_sciences": "social sciences", "other": "other"}


def _rows(table: str) -> list[list[str]]:
    return [line.split("|") for line in table.splitlines()]


# task → {subject: (name in the prompt, [categories])}
SUBJECTS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "cmmlu": {s: (zh, [_CMMLU_CODES[c] for c in codes.split(",")]) for s, zh, codes in _rows(_CMMLU)},
    "mmlu": {s: (s.replace("_", " "), [_MMLU_GROUPS[g]]) for s, g in _rows(_MMLU)},
    "ceval": {s: (zh, [cat.replace("_", " ")]) for s, zh, cat in _rows(_CEVAL)},
    "tmmluplus": {s: (zh, [_MMLU_GROUPS[g]]) for s, zh, g in _rows(_TMMLU)},
}
