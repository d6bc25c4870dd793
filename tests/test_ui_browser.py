"""The Gradio page in a real browser (headless Chromium driven by Selenium): a typed message gets a reply
that streams in, the calculator call shows as its own collapsible message, and the next turn hands the model
its own earlier turn, tool call included, token for token. The page says which model answers and offers example
prompts from its run's mixture; a final `#### 5` shows as an answer; the Inspect tab shows the tokens with what the
inspector computes on hover.

Needs Debian's `chromium` and `chromium-driver` packages (`apt-get install -y chromium chromium-driver`).
Without them the test is skipped, saying why (pytest -ra lists it); NANOCHAT_PL_REQUIRE_BROWSER=1 (set by .ci/run)
makes it fail instead.
"""

import os
import shutil
import time

import pytest
import yaml

from nanochat_pl.apps.inspector import describe, inspect_tokens
from nanochat_pl.apps.web import create_app
from nanochat_pl.tasks.arithmetic import Arithmetic
from nanochat_pl.tokenizer import Tokenizer
from tests.fixtures_chat import TRAINING_TEXT, ScriptedEngine, running_server

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCRIPT = [("text", "Let me add: "), ("python", "2+3"), ("python_output", "5"), ("text", " so it is 5.")]


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        missing = "no chromium and chromedriver on PATH (apt-get install -y chromium chromium-driver)"
        if os.environ.get("NANOCHAT_PL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"NANOCHAT_PL_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"the browser test of the chat page: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 20.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {condition.__doc__}")


def send(browser, text: str) -> None:
    """the message box is there"""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait_for(lambda: [e for e in browser.find_elements(By.CSS_SELECTOR, "textarea") if e.is_displayed()])[0]
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def bot_messages(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    return [m.text for m in browser.find_elements(By.CSS_SELECTOR, "[data-testid='bot']")]


def test_a_typed_message_gets_a_streamed_reply_with_the_tool_call_folded(browser, tmp_path):
    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)
    engine = ScriptedEngine(tokenizer, SCRIPT, delay=0.03)  # slow enough to watch it stream
    meta = {"stage": "sft", "step": 0}
    with running_server(create_app([engine], "nanochat-pl-test", str(tmp_path / "x.ckpt"), meta)) as url:
        browser.get(url + "/")
        send(browser, "hello there")
        seen = []  # every distinct state of the reply on the page while it streams

        def reply_finished():
            """the whole reply on the page"""
            text = "\n".join(bot_messages(browser))
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            return "so it is 5." in text

        wait_for(reply_finished)
        assert bot_messages(browser) == ["Let me add:", "🧮 calculator\n= 5", "so it is 5."]
        assert len(seen) >= 3, f"the reply did not stream, the page only showed {seen}"
        assert all("Let me add:".startswith(text.split("\n")[0]) for text in seen)
        # the expression is inside the collapsed tool message, not in the visible text
        assert "2+3" not in "\n".join(bot_messages(browser))

        send(browser, "and again")
        wait_for(lambda: len(engine.prompts) == 2 and len(bot_messages(browser)) == 6)
        expected, _ = tokenizer.render_conversation(
            [
                {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": [{"type": k, "text": t} for k, t in SCRIPT]},
                {"role": "user", "content": "and again"},
            ],
            max_tokens=None,
        )
        # the rendered conversation ends with the last user turn; the prompt then asks for the assistant
        assert engine.prompts[1] == [*expected, tokenizer.encode_special("<|assistant_start|>")]


def test_the_page_says_what_answers_offers_examples_and_inspects(browser, tmp_path):
    from selenium.webdriver.common.by import By

    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)
    script = [*SCRIPT, ("text", "\n#### 5")]
    engine = ScriptedEngine(tokenizer, script)
    run = tmp_path / "version_0"  # as LightningCLI leaves a run: config.yaml beside checkpoints/
    (run / "checkpoints").mkdir(parents=True)
    arithmetic = {"class_path": "nanochat_pl.tasks.arithmetic.Arithmetic", "init_args": {"size": 5, "split": "test"}}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"val": [arithmetic]}}}))
    example = Arithmetic(size=5, split="test")[0]["messages"][0]["content"]
    meta = {"stage": "sft", "step": 142}
    with running_server(create_app([engine], "nanochat-pl-test", str(run / "checkpoints" / "last.ckpt"), meta)) as url:
        browser.get(url + "/")
        line = f"sft model, step 142, {engine.model.num_params():,} parameters"
        wait_for(lambda: line in browser.find_element(By.TAG_NAME, "body").text)
        examples = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "button.example"))
        assert [button.text for button in examples] == [example]
        examples[0].click()  # sends it
        wait_for(lambda: "so it is 5." in "\n".join(bot_messages(browser)))
        assert bot_messages(browser)[-1] == "so it is 5.\n🎯 Answer: 5"  # an answer, not a heading
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='bot'] h4")
        send(browser, "and again")  # the answer goes back to the model as it wrote it
        wait_for(lambda: len(engine.prompts) == 2)
        turns = [example, [{"type": k, "text": t} for k, t in script], "and again"]
        conversation = [{"role": ("user", "assistant")[i % 2], "content": turn} for i, turn in enumerate(turns)]
        assert engine.prompts[1] == tokenizer.render_for_completion(conversation)

        def visible(xpath: str):
            return [e for e in browser.find_elements(By.XPATH, xpath) if e.is_displayed()]

        visible("//button[@role='tab' and normalize-space()='Inspect']")[0].click()
        wait_for(lambda: visible("//textarea"))[0].send_keys("what is 2+3?")
        visible("//button[normalize-space()='Inspect' and not(@role='tab')]")[0].click()
        spans = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "span.token"))
        tokens = inspect_tokens(engine, "what is 2+3?", max_tokens=64)  # the scripted answer, its tool output forced
        assert [span.get_attribute("title") for span in spans] == [describe(t) for t in tokens]  # id, loss, top 5
        assert ["dashed" in span.get_attribute("style") for span in spans] == [t.forced for t in tokens]
        assert ["underline" in span.get_attribute("style") for span in spans] == [bool(t.trained) for t in tokens]
        assert sum(t.forced for t in tokens) == 3 and sum(bool(t.trained) for t in tokens) > 10
