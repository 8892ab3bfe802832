"""The demo's text project: short customer-support messages in four classes, made here.

Every phrase below was written for this project (Apache-2.0, as the rest of it); nothing is
downloaded or read from outside the package. A message is an opening, one complaint or request
of its class and a closing, drawn with a fixed seed, so every demo gets the same texts: a few
hundred in the pool, unlabelled, and a labelled test split for the proxy's accuracy.
"""

from __future__ import annotations

import csv
import io
import random

CLASSES = ["billing", "delivery", "account", "product"]

# What a message is about, by class: each reads as a sentence on its own.
TOPICS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for the same order",
        "my invoice shows a price higher than the one on your website",
        "the refund you promised two weeks ago has not reached my card",
        "I cancelled my subscription but you billed me again this month",
        "the discount code was not applied at checkout",
        "can I get a copy of the invoice with my company's VAT number on it",
        "my credit card was declined although it works everywhere else",
        "why is there a handling fee on my bill that nobody mentioned",
        "I paid by bank transfer and the order still says payment pending",
        "please split the payment for my order over three months",
        "the receipt shows the wrong billing address",
        "I was charged in dollars instead of euros",
        "my gift card balance disappeared after one purchase",
        "the annual plan was renewed without the reminder email you promised",
        "I need a refund for the item I returned last week",
        "there is a charge on my statement from you that I do not recognise",
        "the tax on my invoice looks wrong for my country",
        "can you change my payment method from card to PayPal",
        "you took the payment but never sent an order confirmation",
        "the price dropped the day after I bought it, can I get the difference back",
    ],
    "delivery": [
        "my parcel has been stuck at the depot for five days",
        "the courier marked the package as delivered but nothing arrived",
        "the box arrived crushed and wet",
        "the tracking number you sent does not work",
        "can I change the delivery address of an order already shipped",
        "only two of the three items in my order were in the parcel",
        "the delivery window was Tuesday and it is now Friday",
        "the driver left the package outside in the rain",
        "do you ship to the Canary Islands",
        "I chose express shipping but it came by the slowest service",
        "the parcel was returned to you because nobody was home",
        "can the courier leave it with my neighbour at number twelve",
        "my order still has not been dispatched after a week",
        "the customs fees on arrival were not mentioned anywhere",
        "I received someone else's parcel with a different name on it",
        "the pickup point you sent my order to is closed for renovation",
        "please hold my delivery until I am back from holiday",
        "the estimated delivery date keeps moving back every day",
        "the courier asked me to pay cash on delivery for a prepaid order",
        "the package was delivered to the wrong floor of my building",
    ],
    "account": [
        "I cannot log in even after resetting my password",
        "the password reset email never arrives",
        "please delete my account and all the data you hold on me",
        "I want to change the email address on my account",
        "my account was locked after too many attempts",
        "someone else seems to have signed in to my account",
        "the two-factor code from the app is always rejected",
        "how do I merge my two accounts into one",
        "I no longer have access to the phone number on my account",
        "please unsubscribe me from the newsletter",
        "my order history is empty since yesterday",
        "the site keeps signing me out every few minutes",
        "I would like to download a copy of my personal data",
        "how do I add a second user to our business account",
        "my username shows somebody else's name",
        "the verification link says it has expired",
        "I cannot update my saved addresses in the profile page",
        "my loyalty points vanished from my account",
        "please change the language of my account emails to Spanish",
        "I signed up with Google and now cannot set a password",
    ],
    "product": [
        "the kettle stopped heating after two days",
        "does this jacket come in a larger size",
        "the battery of the headphones lasts barely an hour",
        "the instructions for the shelf are missing a page",
        "is the blender safe to put in the dishwasher",
        "the colour of the sofa is much darker than in the photos",
        "the charger that came with the phone does not fit the socket",
        "one of the chair legs is shorter than the others",
        "which filter cartridges fit the coffee machine",
        "the screen of my tablet has a line of dead pixels",
        "the shoes are a size smaller than the size chart says",
        "the vacuum cleaner makes a loud rattling noise",
        "is the warranty on the washing machine two years or three",
        "the lamp flickers whenever the dimmer is turned down",
        "the zip of the backpack broke on the first trip",
        "are spare parts available for the lawn mower",
        "the smart watch will not pair with my phone",
        "the frying pan's coating is peeling after a month",
        "does the printer work with recycled paper",
        "the toy is missing the batteries the box says are included",
    ],
}
OPENINGS = ["", "Hi, ", "Hello, ", "Good morning, ", "Hi there, ", "Dear support, ", "Hey, "]
CLOSINGS = [
    ".",
    ". Thanks.",
    ". Please help.",
    ". Thank you in advance.",
    ", what can I do?",
    ". This is the second time I write about it.",
    ". Kind regards.",
    ". Could you look into it?",
]
# Messages in the pool (unlabelled) and in the test split (labelled), per class.
POOL_PER_CLASS = 100
TEST_PER_CLASS = 25
SEED = 16


def _message(opening: str, topic: str, closing: str) -> str:
    first = topic[0].upper() + topic[1:] if not opening else topic
    return f"{opening}{first}{closing}"


def support_messages() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(text, class) pairs for the pool and the test split: distinct, the same every time."""
    rnd = random.Random(SEED)
    pool: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for label, topics in TOPICS.items():
        every = [_message(o, t, c) for t in topics for o in OPENINGS for c in CLOSINGS]
        chosen = rnd.sample(every, POOL_PER_CLASS + TEST_PER_CLASS)
        pool += [(text, label) for text in chosen[:POOL_PER_CLASS]]
        test += [(text, label) for text in chosen[POOL_PER_CLASS:]]
    # Interleaved, as messages arrive, not class by class.
    rnd.shuffle(pool)
    rnd.shuffle(test)
    return pool, test


def support_csvs() -> tuple[bytes, bytes]:
    """The pool as a CSV with a ``text`` column (no labels: that is the annotators' work) and
    the test split with ``text`` and ``label``, as the import reads them (DESIGN 4c)."""
    pool, test = support_messages()
    return _csv(pool, labelled=False), _csv(test, labelled=True)


def _csv(rows: list[tuple[str, str]], *, labelled: bool) -> bytes:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["text", "label"] if labelled else ["text"])
    for text, label in rows:
        out.writerow([text, label] if labelled else [text])
    return buf.getvalue().encode("utf-8")
