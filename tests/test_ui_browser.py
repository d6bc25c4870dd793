"""The Gradio chat page in a real browser (headless Chromium driven by Selenium): a typed message gets a reply
that streams in, the calculator call shows as its own collapsible message, and the next turn hands the model
its own earlier turn, tool call included, token for token.

Needs Debian's `chromium` and `chromium-driver` packages (`apt-get install -y chromium chromium-driver`).
Without them the test is skipped, saying why (pytest -ra lists it); NANOCHAT_PL_REQUIRE_BROWSER=1 (set by .ci/run)
makes it fail instead.
"""

import os
import shutil
import time

import pytest

from nanochat_pl.apps.web import create_app
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


def test_a_typed_message_gets_a_streamed_reply_with_the_tool_call_folded(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    tokenizer = Tokenizer.train_from_iterator(TRAINING_TEXT, vocab_size=320)
    engine = ScriptedEngine(tokenizer, SCRIPT, delay=0.03)  # slow enough to watch it stream
    with running_server(create_app([engine], "nanochat-pl-test")) as url:
        browser.get(url + "/")

        def send(text: str) -> None:
            """the message box is there"""
            box = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "textarea"))[0]
            box.send_keys(text)
            box.send_keys(Keys.ENTER)

        def bot_messages() -> list[str]:
            return [m.text for m in browser.find_elements(By.CSS_SELECTOR, "[data-testid='bot']")]

        send("hello there")
        seen = []  # every distinct state of the reply on the page while it streams

        def reply_finished():
            """the whole reply on the page"""
            text = "\n".join(bot_messages())
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            return "so it is 5." in text

        wait_for(reply_finished)
        assert bot_messages() == ["Let me add:", "🧮 calculator\n= 5", "so it is 5."]
        assert len(seen) >= 3, f"the reply did not stream, the page only showed {seen}"
        assert all("Let me add:".startswith(text.split("\n")[0]) for text in seen)
        # the expression is inside the collapsed tool message, not in the visible text
        assert "2+3" not in "\n".join(bot_messages())

        send("and again")
        wait_for(lambda: len(engine.prompts) == 2 and len(bot_messages()) == 6)
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
